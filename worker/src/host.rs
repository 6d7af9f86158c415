//! Facts about the host the worker runs on, for its id and its registry
//! record. A utility: it imports nothing from the rest of the worker, so
//! the loop, the metrics and the fleet can all use it.

/// The host's name, made safe for worker ids and key names: characters
/// other than ASCII letters, digits, `-` and `.` become `_`; `localhost`
/// when the name cannot be read.
pub(crate) fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}
