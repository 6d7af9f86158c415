//! `tandem-worker`: runs one Tandem worker process, a fleet of them (one per
//! GPU plus a CPU worker), or shows the GPUs this host has.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem_shared::device::{DeviceSelector, Role};
use tandem_shared::{Class, Config};
use tandem_worker::device::detect::Report;
use tandem_worker::{Detection, Registry, fleet, shutdown};

#[derive(Debug, Parser)]
#[command(name = "tandem-worker", version, about = "Runs Tandem workers")]
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
    /// Run one worker (the default), on the CPU or one GPU.
    Run(RunArgs),
    /// Run one worker per GPU (each bound to its device by UUID, with the
    /// role the GPUs' capability gives it) plus a CPU worker, restarting any
    /// that dies; SIGTERM stops them all gracefully.
    Fleet(FleetArgs),
    /// Show this host's GPUs (or the simulated ones), their capability
    /// score and role, and why.
    Detect {
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print every setting with its variable, default and meaning.
    Settings,
}

/// Settings every worker of a fleet shares.
#[derive(Debug, Clone, Default, clap::Args)]
struct CommonArgs {
    /// Redis URL (overrides TANDEM_REDIS_URL / REDIS_URL).
    #[arg(long)]
    redis_url: Option<String>,
    /// Key prefix.
    #[arg(long)]
    prefix: Option<String>,
    /// Tasks run at once per worker (0: one per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Classes to take: cpu,light,parallel,heavy (routing decides among them).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<Class>>,
}

#[derive(Debug, Clone, Default, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Worker id (default: host-device-pid-random).
    #[arg(long)]
    worker_id: Option<String>,
    /// The device: `cpu`, a GPU UUID (or unique prefix), or a GPU index
    /// (`tandem-worker detect` lists them).
    #[arg(long)]
    device: Option<DeviceSelector>,
    /// The GPU's role (heavy, light, both); default: from the host's GPUs.
    #[arg(long)]
    role: Option<Role>,
}

#[derive(Debug, Clone, Default, clap::Args)]
struct FleetArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Run no CPU worker.
    #[arg(long)]
    no_cpu: bool,
}

impl CommonArgs {
    fn apply(&self, config: &mut Config) {
        if let Some(v) = &self.redis_url {
            config.redis_url = v.clone();
        }
        if let Some(v) = &self.prefix {
            config.prefix = v.clone();
        }
        if let Some(v) = self.concurrency {
            config.concurrency = v;
        }
        if let Some(v) = &self.classes {
            config.classes = v.clone();
        }
    }

    /// The same flags again, for a fleet's children.
    fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(v) = &self.redis_url {
            args.extend(["--redis-url".to_owned(), v.clone()]);
        }
        if let Some(v) = &self.prefix {
            args.extend(["--prefix".to_owned(), v.clone()]);
        }
        if let Some(v) = self.concurrency {
            args.extend(["--concurrency".to_owned(), v.to_string()]);
        }
        if let Some(v) = &self.classes {
            let list: Vec<&str> = v.iter().map(|c| c.as_str()).collect();
            args.extend(["--classes".to_owned(), list.join(",")]);
        }
        args
    }
}

impl RunArgs {
    fn apply(self, config: &mut Config) {
        self.common.apply(config);
        if let Some(v) = self.worker_id {
            config.worker_id = v;
        }
        if let Some(v) = self.device {
            config.device = v;
        }
        if let Some(v) = self.role {
            config.role = Some(v);
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
    let command = cli.command.unwrap_or(Command::Run(cli.run));
    match &command {
        Command::Settings => {
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
        Command::Run(args) => args.clone().apply(&mut config),
        Command::Fleet(args) => args.common.apply(&mut config),
        Command::Detect { .. } => {}
    }
    if let Err(err) = config.validate() {
        eprintln!("tandem-worker: {err}");
        return ExitCode::from(2);
    }
    if cli.check_config {
        print!("{config}");
        return ExitCode::SUCCESS;
    }
    if let Command::Detect { json } = command {
        return detect(&config, json);
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
    let outcome = match command {
        Command::Fleet(args) => runtime.block_on(run_fleet(&config, cli.config, args)),
        _ => runtime.block_on(run_worker(&config)),
    };
    // Abandoned tasks (grace ran out) must not hold the process open.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("tandem-worker: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_worker(config: &Config) -> anyhow::Result<ExitCode> {
    if let Err(why) = fleet::follow_parent() {
        anyhow::bail!("{why}");
    }
    let shutdown = shutdown::on_signals()?;
    let mut registry = Registry::with_builtins();
    if config.test_kinds {
        tracing::warn!("test kinds enabled: this worker runs `panic` and `abort` tasks");
        registry.add_test_kinds();
    }
    let report = tandem_worker::run(config, registry, shutdown).await?;
    Ok(if report.device_failed.is_some() {
        ExitCode::from(tandem_worker::EXIT_DEVICE_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_fleet(
    config: &Config,
    config_file: Option<PathBuf>,
    args: FleetArgs,
) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown::on_signals()?;
    let detection = Detection::run(config).map_err(anyhow::Error::msg)?;
    if let Some(note) = &detection.note {
        tracing::warn!("{note}");
    }
    let cpu = config.fleet_cpu_worker && !args.no_cpu;
    tracing::info!("{}", detection.source);
    let members = fleet::plan(config, &detection, cpu);
    if members.is_empty() {
        anyhow::bail!(
            "nothing to run: no GPU ({}) and the CPU worker is off",
            detection.source
        );
    }
    let exe = std::env::current_exe()?;
    let mut common = Vec::new();
    if let Some(path) = config_file {
        common.extend(["--config".to_owned(), path.display().to_string()]);
    }
    // The shared flags go after each member's `run ...`.
    let shared = args.common.to_args();
    let members = members
        .into_iter()
        .map(|mut m| {
            m.args.extend(shared.iter().cloned());
            m
        })
        .collect();
    let launch = fleet::Launch::new(config, exe, common);
    fleet::run(members, launch, shutdown).await;
    Ok(ExitCode::SUCCESS)
}

/// `tandem-worker detect`.
fn detect(config: &Config, json: bool) -> ExitCode {
    let detection = match Detection::run(config) {
        Ok(d) => d,
        Err(err) => {
            eprintln!("tandem-worker: {err}");
            return ExitCode::from(2);
        }
    };
    let report = Report::new(config, &detection);
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("tandem-worker: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.table());
    }
    ExitCode::SUCCESS
}
