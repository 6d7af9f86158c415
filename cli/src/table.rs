//! Plain aligned text tables for terminal output.

/// Renders rows (the first is the header) with columns padded to width;
/// columns whose cells all look numeric are right-aligned.
pub(crate) fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns).map(width).collect();
    let numeric: Vec<bool> = (0..columns)
        .map(|c| {
            rows.iter().skip(1).filter_map(|r| r.get(c)).all(|s| {
                s.is_empty()
                    || s == "-"
                    || s.chars()
                        .all(|ch| ch.is_ascii_digit() || ".,%/x-".contains(ch))
            })
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = (0..columns)
            .map(|c| {
                let cell = row.get(c).map_or("", String::as_str);
                let pad = widths[c].saturating_sub(cell.chars().count());
                if numeric[c] && i > 0 {
                    format!("{}{cell}", " ".repeat(pad))
                } else {
                    format!("{cell}{}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

/// Milliseconds as a bare number, for the benchmark tables whose column
/// headers name the unit.
pub(crate) fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The views' one way to write a span of time (a duration, an age, an
/// offset): `0.45ms`, `850ms`, `12.5s`, `3m10s`, `2h5m`. Below a second it
/// keeps up to three significant digits, so handler times of fast tasks do
/// not all read `0ms`.
pub(crate) fn duration(span: std::time::Duration) -> String {
    let secs = span.as_secs();
    if secs == 0 {
        // Three significant digits at most: `0.45ms`, `12.5ms`, `703ms`.
        let ms = span.as_secs_f64() * 1000.0;
        let text = if ms >= 100.0 {
            format!("{ms:.0}")
        } else if ms >= 10.0 {
            format!("{ms:.1}")
        } else {
            format!("{ms:.2}")
        };
        let text = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.')
        } else {
            &text
        };
        format!("{text}ms")
    } else if secs < 60 {
        format!("{:.1}s", span.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{}h{}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// [`duration`] of a span in milliseconds.
pub(crate) fn age(ms: u64) -> String {
    duration(std::time::Duration::from_millis(ms))
}

/// [`duration`] of a span in microseconds.
pub(crate) fn micros(us: u64) -> String {
    duration(std::time::Duration::from_micros(us))
}

/// The views' one way to write a moment: milliseconds since the epoch as
/// `2026-01-31 12:00:05.250 UTC`. The tool has no calendar crate, and the
/// civil-date arithmetic is short (Howard Hinnant's `civil_from_days`).
pub(crate) fn time(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let in_day = ms % 86_400_000;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    )
}

/// The views' one way to write a size: `512 B`, `1.5 KiB`, `12.0 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `12345` as `12,345`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["name".to_owned(), "count".to_owned()],
            vec!["noop".to_owned(), "5".to_owned()],
            vec!["sleep".to_owned(), "120".to_owned()],
        ];
        assert_eq!(
            render(&rows),
            "name   count\n-----  -----\nnoop       5\nsleep    120\n"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_500), "12.5s");
        assert_eq!(age(190_000), "3m10s");
        assert_eq!(ms(0.456), "0.46");
        assert_eq!(ms(123.4), "123");
        assert_eq!(micros(450), "0.45ms");
        assert_eq!(micros(12_500), "12.5ms");
        assert_eq!(micros(703_430), "703ms");
        assert_eq!(micros(5_000), "5ms");
        assert_eq!(age(0), "0ms");
        assert_eq!(age(7_500_000), "2h5m");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12 << 30), "12.0 GiB");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(time(951_782_400_123), "2000-02-29 00:00:00.123 UTC");
        assert_eq!(time(1_767_225_599_999), "2025-12-31 23:59:59.999 UTC");
    }
}
