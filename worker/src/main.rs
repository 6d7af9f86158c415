//! `tandem-worker`: runs one Tandem worker process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem_shared::{Class, Config};
use tandem_worker::{Registry, shutdown};

#[derive(Debug, Parser)]
#[command(name = "tandem-worker", version, about = "Runs a Tandem worker")]
struct Cli {
    /// TOML file of settings (default: $TANDEM_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Load and validate the configuration, print it, and exit.
    #[arg(long, global = true)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a worker (the default).
    Run(RunArgs),
    /// Print every setting with its variable, default and meaning.
    Settings,
}

#[derive(Debug, Clone, Default, clap::Args)]
struct RunArgs {
    /// Redis URL (overrides TANDEM_REDIS_URL / REDIS_URL).
    #[arg(long)]
    redis_url: Option<String>,
    /// Key prefix.
    #[arg(long)]
    prefix: Option<String>,
    /// Tasks run at once (0: one per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Classes to take, in order of preference: cpu,light,parallel,heavy.
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<Class>>,
    /// Worker id (default: host-pid-random).
    #[arg(long)]
    worker_id: Option<String>,
}

impl RunArgs {
    fn apply(self, config: &mut Config) {
        if let Some(v) = self.redis_url {
            config.redis_url = v;
        }
        if let Some(v) = self.prefix {
            config.prefix = v;
        }
        if let Some(v) = self.concurrency {
            config.concurrency = v;
        }
        if let Some(v) = self.classes {
            config.classes = v;
        }
        if let Some(v) = self.worker_id {
            config.worker_id = v;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tandem-worker: {err}");
            return ExitCode::from(2);
        }
    };
    let run_args = match cli.command {
        Some(Command::Settings) => {
            for s in Config::SETTINGS {
                println!(
                    "{} ({}, default {:?}): {}",
                    s.name,
                    s.env,
                    (s.default)(),
                    s.doc
                );
            }
            return ExitCode::SUCCESS;
        }
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    run_args.apply(&mut config);
    if let Err(err) = config.validate() {
        eprintln!("tandem-worker: {err}");
        return ExitCode::from(2);
    }
    if cli.check_config {
        print!("{config}");
        return ExitCode::SUCCESS;
    }
    tandem_shared::logging::init(&config);

    // One thread runs the claim loop, the connections and every task's
    // future; handlers do CPU-heavy work on blocking threads, so nothing
    // here needs more, and a single thread saves the cross-thread wake-ups
    // that would otherwise cost more than a no-op task itself.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("tandem-worker: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let shutdown = shutdown::on_signals()?;
        let mut registry = Registry::with_builtins();
        if config.test_kinds {
            tracing::warn!("test kinds enabled: this worker runs `panic` and `abort` tasks");
            registry.add_test_kinds();
        }
        let report = tandem_worker::run(&config, registry, shutdown).await?;
        anyhow::Ok(report)
    });
    // Abandoned tasks (grace ran out) must not hold the process open.
    runtime.shutdown_background();
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("tandem-worker: {err:#}");
            ExitCode::FAILURE
        }
    }
}
