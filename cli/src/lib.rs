//! The `tandem` command-line tool: submit and inspect tasks, view queues and
//! alerts, run the demo and the benchmark. `main.rs` only parses and calls [`run`].
//!
//! A crate of its own so that a service embedding `tandem-producer` compiles
//! none of what only the tool needs (clap, ratatui, indicatif) and links no
//! code that spawns processes. It talks to a queue through the producer
//! library's public API and `tandem-shared`'s store, as any client would.
//!
//! # Layout
//!
//! - [`Cli`], [`Command`], [`run`]: the flags, the commands, and the one
//!   function that loads the configuration and runs a command.
//! - `tasks`: submit, wait, status, task (a task's whole story), cancel.
//! - `task_list`: `tandem tasks --status`, the newest tasks in a state.
//! - `kinds`: the kinds, their parameters and JSON Schemas (no Redis).
//! - `queues`, `workers`, `top`, `alerts`: the views of the queue and fleet.
//! - `dlq`, `model`: the dead-letter streams and the model registry.
//! - `schedule`: recurring schedules (add, list, show, pause, resume, rm).
//! - `events`: task lifecycle events, the latest and followed.
//! - `workflow`: `tandem flow submit | status | cancel`, workflows from a
//!   JSON or YAML file.
//! - `demo/`, `bench`, `soak`, `scaling`, `chaos`: workloads and benchmarks,
//!   most on a private Redis and fleet started by `local` (which spawns
//!   `redis-server` and `tandem-worker` processes).
//! - `dashboard/`: `tandem dashboard`, the web page (axum, embedded assets,
//!   server-sent events) and its write actions.
//! - `exporter`: `tandem exporter`, the queue metrics for Prometheus.
//! - `errors`: the message and exit code of a failed command.
//! - `table`: plain-text tables.
//!
//! # Example
//!
//! ```no_run
//! use clap::Parser;
//!
//! let code = tandem_cli::run(tandem_cli::Cli::parse_from(["tandem", "queues"]));
//! # let _ = code;
//! ```

mod alerts;
mod bench;
mod bench_backlog;
mod bench_ceiling;
mod bench_cost;
mod bench_floor;
mod bench_flow;
mod bench_workflow;
mod blob;
mod chaos;
mod dashboard;
mod demo;
mod dlq;
mod errors;
mod events;
mod exporter;
mod flow;
mod kinds;
mod local;
mod model;
mod queues;
mod scaling;
mod schedule;
mod soak;
mod table;
mod task_list;
mod tasks;
mod top;
mod workers;
mod workflow;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem_shared::{Config, exit};

pub use alerts::AlertsArgs;
pub use bench::BenchArgs;
pub use chaos::ChaosArgs;
pub use demo::DemoArgs;
pub use dlq::DlqCommand;
pub use events::EventsArgs;
pub use flow::{LimitCommand, PauseArgs};
pub use kinds::KindsArgs;
pub use model::{ModelCommand, NewArgs as ModelNewArgs};
pub use queues::QueuesArgs;
pub use scaling::ScalingArgs;
pub use schedule::{AddArgs as ScheduleAddArgs, ScheduleCommand};
pub use soak::SoakArgs;
pub use tasks::{SubmitArgs, TaskArgs, TaskViewArgs, WaitArgs};
pub use top::TopArgs;
pub use workers::WorkersArgs;
pub use workflow::WorkflowCommand;

/// Tandem: a GPU-aware job queue on Redis Streams.
#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "Tandem, a GPU-aware job queue on Redis Streams: submit and inspect tasks, \
             watch queues, workers and alerts, manage models and dead letters",
    arg_required_else_help = true
)]
pub struct Cli {
    /// TOML file of settings (default: $TANDEM_CONFIG).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Redis URL (overrides TANDEM_REDIS_URL / REDIS_URL).
    #[arg(long, global = true)]
    pub redis_url: Option<String>,
    /// Key prefix (overrides TANDEM_PREFIX).
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    /// Load and validate the configuration as the command would, print the
    /// effective settings (secrets hidden) and exit: 0 when valid, 2 when not.
    /// Connects to nothing, so a container's settings can be checked anywhere.
    #[arg(long, global = true)]
    pub check_config: bool,
    /// Optional only so that `tandem --check-config` needs no command.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a task; prints its id (or, with --wait, its outcome).
    Submit(SubmitArgs),
    /// Wait for a task to finish and print its outcome.
    Wait(WaitArgs),
    /// Print a task's record.
    Status(TaskArgs),
    /// A task's whole story: submission, every attempt (worker, device,
    /// times, outcome), hand-backs, retries, split progress, the result.
    Task(TaskViewArgs),
    /// Cancel a task.
    Cancel(TaskArgs),
    /// A web dashboard (loopback by default): the fleet, the queues, tasks
    /// by state, dead letters (requeue, purge), alerts and schedules, live.
    Dashboard(dashboard::DashboardArgs),
    /// Serve the queue metrics (waiting, running, oldest waiting age,
    /// delayed, retrying, dead letters per class and priority) on
    /// /metrics for Prometheus, from a host without a fleet.
    Exporter(exporter::ExporterArgs),
    /// The newest tasks in a state (running, succeeded, failed, cancelled,
    /// expired, dead), from the state index; --kind and --class filter.
    Tasks(task_list::TasksArgs),
    /// Per stream: waiting, pending, consumers, oldest waiting age; then
    /// delayed tasks, pauses and rate limits.
    Queues(QueuesArgs),
    /// Pause a class (heavy), a class and priority (heavy:high) or a kind
    /// (kind:risk) fleet-wide: running tasks finish, nothing new starts,
    /// submitting still works.
    Pause(PauseArgs),
    /// Resume what `tandem pause` paused.
    Resume(PauseArgs),
    /// Fleet-wide rate limits per kind or per key: set, rm, list.
    #[command(subcommand)]
    Limit(LimitCommand),
    /// The live workers: device, role, health, utilization, memory,
    /// temperature, power, tasks, tasks/s, and the kinds a GPU worker runs
    /// on its CPU because its kernels or cuBLAS did not load.
    Workers(WorkersArgs),
    /// A live full-screen view of workers and queues (q to quit).
    Top(TopArgs),
    /// The latest alerts (hot or underused GPUs, failed devices, GPU
    /// workers computing on their CPU, stalled queues, growing dead
    /// letters), newest first.
    Alerts(AlertsArgs),
    /// Task lifecycle events (submitted, started, progress, retried,
    /// succeeded, failed, dead_lettered, cancelled, expired): the latest,
    /// then with --follow each new one.
    Events(EventsArgs),
    /// The dead-letter streams: list, show, requeue, purge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The model registry: new, register, upload, list, show, rm.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Recurring schedules (cron in a time zone, or every period): add,
    /// list, show, pause, resume, rm.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// The blob store: put a file (for a task's parameters), get, stat,
    /// sweep.
    #[command(subcommand)]
    Blob(blob::BlobCommand),
    /// Workflows: graphs of tasks submitted as one unit (chains, groups,
    /// chords) from a JSON or YAML file; their status and cancel.
    #[command(subcommand)]
    Flow(WorkflowCommand),
    /// Start a local Redis (unless REDIS_URL is set) and workers, run a mixed
    /// workload with a progress bar, print a summary, clean up.
    Demo(DemoArgs),
    /// Measure queue overhead with no-op tasks: submit, claim, run, commit, await.
    Bench(BenchArgs),
    /// Push a million tasks through and watch Redis memory stay flat.
    Soak(SoakArgs),
    /// Split one parallel task over 1, 2, 4 ... simulated GPUs (a private
    /// Redis and fleet each): makespan against the ideal, and each GPU's
    /// idle gaps between shards.
    Scaling(ScalingArgs),
    /// Kill and stop workers of a fleet at random while tasks run: how fast
    /// each dead worker's tasks restart elsewhere (a private Redis and fleet).
    Chaos(ChaosArgs),
    /// Every kind: class, whether it splits, parameters (type, bounds,
    /// default, meaning) and an example; --json-schema for JSON Schemas.
    Kinds(KindsArgs),
    /// Print every setting with its environment variable, default and meaning.
    Settings {
        /// As a Markdown table (the README's).
        #[arg(long)]
        markdown: bool,
    },
}

/// Loads the configuration and runs one command.
pub fn run(cli: Cli) -> ExitCode {
    let redis_url_given = cli.redis_url.is_some()
        || std::env::var_os("REDIS_URL").is_some()
        || std::env::var_os("TANDEM_REDIS_URL").is_some();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tandem: {err}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if let Some(url) = cli.redis_url {
        config.redis_url = url;
    }
    if let Some(prefix) = cli.prefix {
        config.prefix = prefix;
    }
    if let Err(err) = config.validate() {
        eprintln!("tandem: {err}");
        return ExitCode::from(exit::USAGE);
    }
    if std::env::var_os("RUST_LOG").is_none() && std::env::var_os("TANDEM_LOG_LEVEL").is_none() {
        // The tool prints its own output; only problems go to the log.
        config.log_level = "warn".into();
    }
    if cli.check_config {
        print!("{config}");
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("tandem: a command is needed (see `tandem --help`)");
        return ExitCode::from(exit::USAGE);
    };
    tandem_shared::logging::init(&config);

    if let Command::Kinds(args) = command {
        return kinds::run(args);
    }
    if let Command::Settings { markdown } = command {
        settings(markdown);
        return ExitCode::SUCCESS;
    }
    // One thread: the tool waits on Redis, and cross-thread wake-ups would
    // cost more than they save (see the worker's main).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("tandem: cannot start the runtime: {err}");
            return ExitCode::from(exit::ERROR);
        }
    };
    // For an error message; the commands take the configuration.
    let redis_url = config.redis_url_redacted();
    let outcome = runtime.block_on(async move {
        match command {
            Command::Submit(args) => tasks::submit(&config, args).await,
            Command::Wait(args) => tasks::wait(&config, args).await,
            Command::Status(args) => tasks::status(&config, args).await,
            Command::Task(args) => tasks::task(&config, args).await,
            Command::Cancel(args) => tasks::cancel(&config, args).await,
            Command::Tasks(args) => task_list::run(&config, args).await,
            Command::Exporter(args) => exporter::run(&config, args).await,
            Command::Dashboard(args) => dashboard::run(&config, args).await,
            Command::Queues(args) => queues::run(&config, &args).await,
            Command::Pause(args) => flow::pause(&config, args).await,
            Command::Resume(args) => flow::resume(&config, args).await,
            Command::Limit(command) => flow::limit(&config, command).await,
            Command::Workers(args) => workers::run(&config, args).await,
            Command::Top(args) => top::run(&config, args).await,
            Command::Alerts(args) => alerts::run(&config, args).await,
            Command::Events(args) => events::run(&config, args).await,
            Command::Dlq(command) => dlq::run(&config, command).await,
            Command::Model(command) => model::run(&config, command).await,
            Command::Schedule(command) => schedule::run(&config, command).await,
            Command::Blob(command) => blob::run(&config, command).await,
            Command::Flow(command) => workflow::run(&config, command).await,
            Command::Demo(args) => demo::run(config, redis_url_given, args).await,
            Command::Bench(args) => bench::run(config, redis_url_given, args).await,
            Command::Soak(args) => soak::run(config, redis_url_given, args).await,
            Command::Scaling(args) => scaling::run(config, args).await,
            Command::Chaos(args) => chaos::run(config, args).await,
            Command::Settings { .. } | Command::Kinds(_) => Ok(ExitCode::SUCCESS),
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tandem: {}", errors::message(&err, &redis_url));
            ExitCode::from(errors::exit_code(&err))
        }
    }
}

fn settings(markdown: bool) {
    if markdown {
        println!("| setting | variable | default | meaning |\n|---|---|---|---|");
        for s in Config::SETTINGS {
            let default = (s.default)();
            let default = if default.is_empty() {
                "(empty)".to_owned()
            } else {
                format!("`{default}`")
            };
            println!(
                "| `{}` | `{}` | {default} | {} |",
                s.name,
                s.env,
                s.doc.trim()
            );
        }
        return;
    }
    let mut rows = vec![vec![
        "setting".to_owned(),
        "variable".to_owned(),
        "default".to_owned(),
        "meaning".to_owned(),
    ]];
    for s in Config::SETTINGS {
        rows.push(vec![
            s.name.to_owned(),
            s.env.to_owned(),
            (s.default)(),
            s.doc.trim().to_owned(),
        ]);
    }
    print!("{}", table::render(&rows));
}
