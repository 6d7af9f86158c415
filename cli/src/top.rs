//! `tandem top`: a live full-screen view of the fleet, refreshed every
//! second until `q`, Esc or Ctrl-C: the workers (the `tandem workers` rows,
//! as many columns as fit), the queues as a class x priority matrix of
//! waiting tasks (no row per empty stream), and the latest alerts. Every
//! panel is laid out for the terminal's size: columns that do not fit are
//! left out whole, long alert messages wrap, and what does not fit in height
//! is counted ("and 3 more"), so no cell is ever cut. `--once` draws one
//! frame of a given size to stdout as text, for scripts and tests.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::widgets::{Block, Paragraph};
use ratatui::{Frame, Terminal, backend::TestBackend};
use tandem_shared::store::{AlertEntry, Store, StreamStats};
use tandem_shared::wire::WorkerInfo;
use tandem_shared::{Class, Config, Priority};

use super::{table, workers};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Draw one frame to stdout as text and exit.
    #[arg(long)]
    pub once: bool,
    /// The frame's width in columns, with --once.
    #[arg(long, default_value_t = 100)]
    pub width: u16,
    /// The frame's height in lines, with --once.
    #[arg(long, default_value_t = 24)]
    pub height: u16,
    /// How often the live view reads Redis again, in ms.
    #[arg(long, default_value_t = 1_000)]
    pub interval_ms: u64,
}

/// How many of the latest alerts a frame reads; the panel shows as many
/// as fit.
const ALERTS_READ: usize = 20;

/// What one frame shows: one read of the registry, the streams and the
/// alerts.
#[derive(Debug, Default)]
struct Snapshot {
    workers: Vec<WorkerInfo>,
    queues: Vec<StreamStats>,
    alerts: Vec<AlertEntry>,
    now_ms: u64,
    /// Why the last read failed; the live view shows the previous data
    /// under it and keeps trying (Redis restarting is no reason to quit).
    error: Option<String>,
}

impl Snapshot {
    async fn read(store: &Store) -> anyhow::Result<Self> {
        Ok(Self {
            workers: store.workers().await?,
            queues: store.queue_stats(Class::ALL).await?,
            alerts: store.alerts(ALERTS_READ).await?,
            now_ms: tandem_shared::clock::now_ms(),
            error: None,
        })
    }
}

pub(crate) async fn run(config: &Config, args: TopArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect_retrying(config).await?;
    if args.once {
        let snapshot = Snapshot::read(&store).await?;
        print!("{}", render_once(&snapshot, args.width, args.height)?);
        return Ok(ExitCode::SUCCESS);
    }
    live(&store, Duration::from_millis(args.interval_ms.max(100))).await?;
    Ok(ExitCode::SUCCESS)
}

/// One frame on an off-screen backend, as lines of text.
fn render_once(snapshot: &Snapshot, width: u16, height: u16) -> anyhow::Result<String> {
    let mut terminal = Terminal::new(TestBackend::new(width.max(20), height.max(5)))?;
    terminal.draw(|frame| draw(frame, snapshot))?;
    Ok(buffer_text(terminal.backend().buffer()))
}

fn buffer_text(buffer: &Buffer) -> String {
    let width = usize::from(buffer.area.width);
    let mut out = String::new();
    for line in buffer.content.chunks(width.max(1)) {
        let text: String = line.iter().map(|cell| cell.symbol()).collect();
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// Restores the terminal however the view ends, an error included.
/// (`ratatui::try_init` also restores it on a panic.)
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

async fn live(store: &Store, interval: Duration) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let mut snapshot = Snapshot::default();
    loop {
        match Snapshot::read(store).await {
            Ok(fresh) => snapshot = fresh,
            Err(err) => snapshot.error = Some(format!("{err:#}")),
        }
        terminal.draw(|frame| draw(frame, &snapshot))?;
        if quit_requested(interval)? {
            return Ok(());
        }
    }
}

/// Waits up to `interval` for a key; true for q, Esc or Ctrl-C (raw mode
/// delivers Ctrl-C as a key, not a signal). Blocking here is fine: the
/// runtime has a single thread and nothing else to do between reads.
fn quit_requested(interval: Duration) -> anyhow::Result<bool> {
    let until = Instant::now() + interval;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || !event::poll(left)? {
            return Ok(false);
        }
        if let Event::Key(key) = event::read()? {
            let ctrl_c =
                key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
            if key.kind == KeyEventKind::Press
                && (ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc))
            {
                return Ok(true);
            }
        }
    }
}

/// The workers' columns, most important first: when the terminal is
/// narrow, columns are left out from the end of this list.
const WORKER_COLUMNS: [&str; 17] = [
    "worker",
    "health",
    "role",
    "tasks",
    "util",
    "kernels",
    "gpu memory",
    "done",
    "failed",
    "beat",
    "device",
    "tasks/s",
    "temp",
    "power",
    "booked",
    "name",
    "host",
];

/// Lines of the matrix panel: header and one row per class.
const MATRIX_LINES: usize = 1 + Class::ALL.len();
/// The fewest lines the alerts panel keeps, inside its borders.
const ALERT_LINES_MIN: usize = 2;

fn draw(frame: &mut Frame, snapshot: &Snapshot) {
    let area = frame.area();
    let width = usize::from(area.width);
    let inner = width.saturating_sub(2);
    let height = usize::from(area.height);

    let worker_rows = fit_columns(
        &workers::rows(&snapshot.workers, snapshot.now_ms),
        &WORKER_COLUMNS,
        inner,
    );
    // Whatever height the title, the matrix and the smallest alerts panel
    // leave goes to the workers; those that do not fit are counted.
    let room = height
        .saturating_sub(1 + (MATRIX_LINES + 2) + (ALERT_LINES_MIN + 2) + 2)
        .max(2);
    let mut worker_lines = text_lines(&worker_rows);
    if worker_lines.len() > room {
        let hidden = worker_lines.len() - (room - 1);
        worker_lines.truncate(room - 1);
        worker_lines.push(format!("and {hidden} more (tandem workers lists all)"));
    }
    let matrix_lines = text_lines(&fit_columns(
        &matrix_rows(&snapshot.queues),
        &MATRIX_HEADER,
        inner,
    ));

    let [title, workers_area, matrix_area, alerts_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(height_of(worker_lines.len() + 2)),
        Constraint::Length(height_of(matrix_lines.len() + 2)),
        Constraint::Min(3),
    ])
    .areas(area);

    frame.render_widget(Paragraph::new(heading(snapshot, width)), title);
    frame.render_widget(
        Paragraph::new(worker_lines.join("\n")).block(Block::bordered().title(" workers ")),
        workers_area,
    );
    frame.render_widget(
        Paragraph::new(matrix_lines.join("\n"))
            .block(Block::bordered().title(" waiting tasks: class x priority ")),
        matrix_area,
    );
    let alert_room = usize::from(alerts_area.height.saturating_sub(2));
    frame.render_widget(
        Paragraph::new(
            alert_lines(&snapshot.alerts, snapshot.now_ms, inner, alert_room).join("\n"),
        )
        .block(Block::bordered().title(" alerts, newest first ")),
        alerts_area,
    );
}

fn height_of(lines: usize) -> u16 {
    u16::try_from(lines).unwrap_or(u16::MAX)
}

/// The title line: as many of its parts as fit, most important first.
fn heading(snapshot: &Snapshot, width: usize) -> String {
    let waiting: u64 = snapshot.queues.iter().map(|s| s.waiting).sum();
    let pending: u64 = snapshot.queues.iter().map(|s| s.pending).sum();
    let mut parts = vec![
        "tandem top".to_owned(),
        format!("{} workers", snapshot.workers.len()),
        format!("{} waiting", table::thousands(waiting)),
        format!("{} running", table::thousands(pending)),
        format!("{} alerts", snapshot.alerts.len()),
    ];
    if let Some(error) = &snapshot.error {
        parts.push(format!("read failed: {error}"));
    }
    parts.push(table::time(snapshot.now_ms));
    parts.push("q quits".to_owned());
    let mut line = String::new();
    for part in parts {
        let next = if line.is_empty() {
            part
        } else {
            format!("{line}  {part}")
        };
        if next.chars().count() > width {
            break;
        }
        line = next;
    }
    line
}

/// `rows` (the first is the header) with only the columns, named in
/// `priority` (most important first), that fit `width` side by side; the
/// kept columns stay in their original order. A column is shown whole or
/// not at all.
fn fit_columns(rows: &[Vec<String>], priority: &[&str], width: usize) -> Vec<Vec<String>> {
    let Some(header) = rows.first() else {
        return Vec::new();
    };
    let widest = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
    };
    let mut kept: Vec<usize> = Vec::new();
    let mut used = 0;
    for name in priority {
        let Some(c) = header.iter().position(|h| h == name) else {
            continue;
        };
        let needed = widest(c) + if kept.is_empty() { 0 } else { 2 };
        if used + needed > width {
            break;
        }
        used += needed;
        kept.push(c);
    }
    kept.sort_unstable();
    rows.iter()
        .map(|r| {
            kept.iter()
                .map(|&c| r.get(c).cloned().unwrap_or_default())
                .collect()
        })
        .collect()
}

/// A table as aligned lines, without the rule under the header (height is
/// scarce here).
fn text_lines(rows: &[Vec<String>]) -> Vec<String> {
    if rows.is_empty() {
        return Vec::new();
    }
    table::render(rows)
        .lines()
        .enumerate()
        .filter(|&(i, _)| i != 1)
        .map(|(_, l)| l.to_owned())
        .collect()
}

const MATRIX_HEADER: [&str; 8] = [
    "class",
    "critical",
    "high",
    "normal",
    "low",
    "running",
    "oldest",
    "consumers",
];

/// One row per class: its waiting tasks in each priority's stream (`-` for
/// none), the tasks its workers run, the oldest waiting task's age and the
/// consumers reading it. Every stream is in the matrix, empty or not, in
/// one cell: no line per empty stream.
fn matrix_rows(stats: &[StreamStats]) -> Vec<Vec<String>> {
    let mut rows = vec![MATRIX_HEADER.map(String::from).to_vec()];
    for &class in Class::ALL {
        let of_class: Vec<&StreamStats> = stats.iter().filter(|s| s.class == class).collect();
        let mut row = vec![class.to_string()];
        for &priority in Priority::ALL {
            let waiting: u64 = of_class
                .iter()
                .filter(|s| s.priority == priority)
                .map(|s| s.waiting)
                .sum();
            row.push(if waiting == 0 {
                "-".to_owned()
            } else {
                table::thousands(waiting)
            });
        }
        let running: u64 = of_class.iter().map(|s| s.pending).sum();
        row.push(table::thousands(running));
        row.push(
            of_class
                .iter()
                .filter_map(|s| s.oldest_waiting_ms)
                .max()
                .map_or_else(|| "-".to_owned(), table::age),
        );
        row.push(
            of_class
                .iter()
                .map(|s| s.consumers)
                .max()
                .unwrap_or(0)
                .to_string(),
        );
        rows.push(row);
    }
    rows
}

/// The latest alerts, newest first, each `ago  alert  worker  message`,
/// wrapped at `width` (a message is never cut); those that do not fit in
/// `room` lines are counted on the last line.
fn alert_lines(alerts: &[AlertEntry], now_ms: u64, width: usize, room: usize) -> Vec<String> {
    if alerts.is_empty() {
        return vec!["no alerts".to_owned()];
    }
    let mut lines = Vec::new();
    for (i, entry) in alerts.iter().enumerate() {
        let a = &entry.alert;
        let text = format!(
            "{} ago  {}  {}  {}",
            table::age(now_ms.saturating_sub(a.at_ms)),
            a.alert,
            a.worker,
            a.message
        );
        let wrapped = wrap(&text, width);
        let left = alerts.len() - i;
        // Keep a line to count the rest, unless this is the last alert.
        let needed = wrapped.len() + usize::from(left > 1);
        if lines.len() + needed > room {
            lines.push(format!("and {left} more (tandem alerts lists them)"));
            break;
        }
        lines.extend(wrapped);
    }
    lines
}

/// Greedy word wrap; a word longer than the width is split (it could not
/// be shown otherwise).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let mut word = word.to_owned();
        loop {
            let len = line.chars().count();
            let sep = usize::from(len > 0);
            if len + sep + word.chars().count() <= width {
                if sep == 1 {
                    line.push(' ');
                }
                line.push_str(&word);
                break;
            }
            if len > 0 {
                lines.push(std::mem::take(&mut line));
                continue;
            }
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            lines.push(head);
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use tandem_shared::store::Alert;

    use super::*;

    fn fleet() -> Snapshot {
        let worker = |id: &str, device: &str| WorkerInfo {
            id: id.into(),
            host: "gpu-host-01".into(),
            device: device.into(),
            device_name: "NVIDIA GeForce RTX 4070 Ti (simulated)".into(),
            concurrency: 4,
            memory_total: 12 << 30,
            memory_budget: 11 << 30,
            heartbeat_at_ms: 9_000,
            ..WorkerInfo::default()
        };
        let stream = |class: Class, priority: Priority, waiting: u64| StreamStats {
            class,
            priority,
            key: format!("tandem:{{{class}}}:stream:{priority}"),
            waiting,
            pending: 1,
            consumers: 2,
            oldest_waiting_ms: Some(1_500),
        };
        Snapshot {
            workers: vec![
                worker("gpu-host-01-sim0-4242-a1b2", "SIM-0-rtx-4070-ti"),
                worker("gpu-host-01-sim1-4243-c3d4", "SIM-1-rtx-3060-ti"),
                worker("gpu-host-01-cpu-4244-e5f6", "cpu"),
            ],
            queues: vec![
                stream(Class::Heavy, Priority::High, 3),
                stream(Class::Cpu, Priority::Normal, 12_345),
                stream(Class::Parallel, Priority::Low, 0),
            ],
            alerts: vec![AlertEntry {
                id: "1-0".into(),
                alert: Alert {
                    alert: "queue_stalled".into(),
                    worker: "gpu-host-01-cpu-4244-e5f6".into(),
                    message: "tandem:{cpu}:stream:normal has had 12345 tasks waiting for 40.0s \
                              while no worker took one: is a worker for class cpu running?"
                        .into(),
                    at_ms: 5_000,
                    ..Alert::default()
                },
            }],
            now_ms: 10_000,
            error: None,
        }
    }

    #[test]
    fn a_frame_fits_small_and_large_terminals_without_cutting_a_cell() {
        let snapshot = fleet();
        for (width, height) in [(100, 24), (160, 48)] {
            let text = render_once(&snapshot, width, height).unwrap();
            assert_eq!(text.lines().count(), usize::from(height), "{text}");
            for line in text.lines() {
                assert!(line.chars().count() <= usize::from(width), "{line}");
            }
            for w in &snapshot.workers {
                assert!(text.contains(&w.id), "{} cut at {width}:\n{text}", w.id);
            }
            let heavy = text.lines().find(|l| l.contains("│heavy")).expect(&text);
            let cells: Vec<&str> = heavy.trim_matches('│').split_whitespace().collect();
            assert_eq!(cells[..5], ["heavy", "-", "3", "-", "-"], "{text}");
            assert!(text.contains("12,345"), "{text}");
            assert!(text.contains("alerts, newest first"), "{text}");
            let words: Vec<&str> = text.split_whitespace().collect();
            let joined = words.join(" ");
            let message: Vec<&str> = snapshot.alerts[0]
                .alert
                .message
                .split_whitespace()
                .collect();
            assert!(
                joined.contains(&message.join(" ")) || {
                    // Wrapped inside the panel: the border sits between lines.
                    let bare = joined.replace("│ │", " ").replace("│", "");
                    bare.split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .contains(&message.join(" "))
                },
                "{text}"
            );
        }
    }

    #[test]
    fn narrow_terminals_drop_whole_columns_and_count_what_does_not_fit() {
        let mut snapshot = fleet();
        let rows = fit_columns(&workers::rows(&snapshot.workers, 0), &WORKER_COLUMNS, 60);
        assert_eq!(rows[0][0], "worker");
        let width = text_lines(&rows).iter().map(|l| l.chars().count()).max();
        assert!(width <= Some(60), "{rows:?}");

        snapshot.alerts = (0..10).map(|_| snapshot.alerts[0].clone()).collect();
        let text = render_once(&snapshot, 100, 24).unwrap();
        assert!(text.contains("more (tandem alerts lists them)"), "{text}");
        assert!(wrap("aaaa bb cccccccc", 4) == ["aaaa", "bb", "cccc", "cccc"]);
    }
}
