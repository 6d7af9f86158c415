//! `tandem top`: a live full-screen view of the workers (the `tandem
//! workers` rows) and the queues (the `tandem queues` data), refreshed every
//! second until `q`, Esc or Ctrl-C. `--once` draws one frame of a fixed size
//! to stdout as text instead, for scripts and tests.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{Frame, Terminal, backend::TestBackend};
use tandem_shared::store::{Store, StreamStats};
use tandem_shared::wire::WorkerInfo;
use tandem_shared::{Class, Config};

use super::{table, workers};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Draw one frame to stdout as text and exit.
    #[arg(long)]
    pub once: bool,
    /// The frame's width in columns, with --once.
    #[arg(long, default_value_t = 200)]
    pub width: u16,
    /// The frame's height in lines, with --once.
    #[arg(long, default_value_t = 40)]
    pub height: u16,
    /// How often the live view reads Redis again, in ms.
    #[arg(long, default_value_t = 1_000)]
    pub interval_ms: u64,
}

/// What one frame shows: one read of the registry and the streams.
#[derive(Debug, Default)]
struct Snapshot {
    workers: Vec<WorkerInfo>,
    queues: Vec<StreamStats>,
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
            now_ms: workers::now_ms(),
            error: None,
        })
    }
}

pub(crate) async fn run(config: &Config, args: TopArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect(config).await?;
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

fn draw(frame: &mut Frame, snapshot: &Snapshot) {
    let worker_rows = workers::rows(&snapshot.workers, snapshot.now_ms);
    // Header, rule-free body and the block's two borders.
    let workers_height = u16::try_from(worker_rows.len() + 2).unwrap_or(u16::MAX);
    let [title, workers_area, queues_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(workers_height),
        Constraint::Min(3),
    ])
    .areas(frame.area());

    let waiting: u64 = snapshot.queues.iter().map(|s| s.waiting).sum();
    let pending: u64 = snapshot.queues.iter().map(|s| s.pending).sum();
    let mut heading = format!(
        "tandem top  {} workers  {} waiting  {} running or awaiting commit  (q to quit)",
        snapshot.workers.len(),
        table::thousands(waiting),
        table::thousands(pending),
    );
    if let Some(error) = &snapshot.error {
        heading = format!("{heading}  read failed: {error}");
    }
    frame.render_widget(Paragraph::new(heading), title);
    frame.render_widget(grid(&worker_rows, " workers "), workers_area);
    frame.render_widget(grid(&queue_rows(&snapshot.queues), " queues "), queues_area);
}

/// The `tandem queues` columns, one row per stream.
fn queue_rows(stats: &[StreamStats]) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "stream",
            "class",
            "priority",
            "waiting",
            "pending",
            "consumers",
            "oldest waiting",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in stats {
        rows.push(vec![
            s.key.clone(),
            s.class.to_string(),
            s.priority.to_string(),
            table::thousands(s.waiting),
            table::thousands(s.pending),
            s.consumers.to_string(),
            s.oldest_waiting_ms
                .map_or_else(|| "-".to_owned(), table::age),
        ]);
    }
    rows
}

/// A bordered table whose columns are as wide as their widest cell; the
/// first row is the header.
fn grid<'a>(rows: &'a [Vec<String>], title: &'a str) -> Table<'a> {
    let columns = rows.first().map_or(0, Vec::len);
    let widths = (0..columns).map(|c| {
        let widest = rows
            .iter()
            .filter_map(|r| r.get(c))
            .map(|cell| cell.chars().count())
            .max()
            .unwrap_or(0);
        Constraint::Length(u16::try_from(widest).unwrap_or(u16::MAX))
    });
    let mut lines = rows.iter().map(|r| Row::new(r.iter().map(String::as_str)));
    let header = lines
        .next()
        .unwrap_or_default()
        .style(Style::new().add_modifier(Modifier::BOLD));
    Table::new(lines, widths)
        .header(header)
        .column_spacing(2)
        .block(Block::bordered().title(title))
}

#[cfg(test)]
mod tests {
    use tandem_shared::Priority;

    use super::*;

    #[test]
    fn one_frame_shows_workers_and_queues() {
        let snapshot = Snapshot {
            workers: vec![WorkerInfo {
                id: "host-cpu-1-ab".into(),
                host: "host".into(),
                device: "cpu".into(),
                concurrency: 4,
                ..WorkerInfo::default()
            }],
            queues: vec![StreamStats {
                class: Class::Heavy,
                priority: Priority::High,
                key: "tandem:{heavy}:stream:high".into(),
                waiting: 3,
                pending: 0,
                consumers: 0,
                oldest_waiting_ms: Some(1_500),
            }],
            now_ms: 0,
            error: None,
        };
        let text = render_once(&snapshot, 220, 20).unwrap();
        assert_eq!(text.lines().count(), 20);
        let worker = text.lines().find(|l| l.contains("host-cpu-1-ab")).unwrap();
        assert!(worker.contains("0/4"), "{text}");
        let queue = text
            .lines()
            .find(|l| l.contains("tandem:{heavy}:stream:high"))
            .unwrap();
        let cells: Vec<&str> = queue.split_whitespace().collect();
        assert_eq!(
            &cells[1..7],
            ["heavy", "high", "3", "0", "0", "1.5s"],
            "{text}"
        );
        assert!(text.contains("3 waiting"), "{text}");
    }
}
