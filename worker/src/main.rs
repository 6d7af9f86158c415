//! `tandem-worker`: runs one Tandem worker process, a fleet of them (one per
//! GPU plus a CPU worker), or shows the GPUs this host has.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem_shared::device::{DeviceSelector, Role};
use tandem_shared::{Class, Config, exit};
use tandem_worker::device::detect::Report;
use tandem_worker::{Detection, KindTable, WorkerError, fleet, shutdown};

#[derive(Debug, Parser)]
#[command(name = "tandem-worker", version, about = "Runs Tandem workers")]
struct Cli {
    /// TOML file of settings (default: $TANDEM_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Load and validate the configuration, print it, and exit.
    #[arg(long, global = true)]
    check_config: bool,
    /// Global, as `tandem`'s shared flags are: clap accepts them before and
    /// after the command, and both places must mean the same.
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
    /// One worker's flags, for `tandem-worker` without a command (which
    /// runs one). Given before `run`, they are merged with run's own.
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
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// Key prefix.
    #[arg(long, global = true)]
    prefix: Option<String>,
    /// Tasks run at once per worker (0: one per core).
    #[arg(long, global = true)]
    concurrency: Option<usize>,
    /// Tasks claimed ahead of the free slots (default 0: off).
    #[arg(long, global = true)]
    prefetch: Option<usize>,
    /// Classes to take: cpu,light,parallel,heavy (routing decides among them).
    #[arg(long, global = true, value_delimiter = ',')]
    classes: Option<Vec<Class>>,
}

/// The flags that pick one worker's identity and device: `run` only.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
struct RunArgs {
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
    /// Run no CPU worker (sets fleet_cpu_worker = false).
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
        if let Some(v) = self.prefetch {
            config.prefetch = Some(v);
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
        if let Some(v) = self.prefetch {
            args.extend(["--prefetch".to_owned(), v.to_string()]);
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

    /// The flags given before `run` and after it, as one set. A flag given
    /// in both places is refused rather than one silently winning.
    fn merge(before: RunArgs, after: RunArgs) -> Result<RunArgs, String> {
        let both = |name: &str, a: bool, b: bool| {
            if a && b {
                Err(format!(
                    "--{name} is given both before and after `run`; give it once"
                ))
            } else {
                Ok(())
            }
        };
        both(
            "worker-id",
            before.worker_id.is_some(),
            after.worker_id.is_some(),
        )?;
        both("device", before.device.is_some(), after.device.is_some())?;
        both("role", before.role.is_some(), after.role.is_some())?;
        Ok(RunArgs {
            worker_id: after.worker_id.or(before.worker_id),
            device: after.device.or(before.device),
            role: after.role.or(before.role),
        })
    }

    /// The flags given, by name, for a command that does not take them.
    fn given(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.worker_id.is_some() {
            names.push("--worker-id");
        }
        if self.device.is_some() {
            names.push("--device");
        }
        if self.role.is_some() {
            names.push("--role");
        }
        names
    }
}

/// A usage or configuration error: printed once, exit 2.
fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("tandem-worker: {message}");
    ExitCode::from(exit::USAGE)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => return usage(err),
    };
    let command = match cli.command {
        None => Command::Run(cli.run),
        Some(Command::Run(after)) => match RunArgs::merge(cli.run, after) {
            Ok(args) => Command::Run(args),
            Err(message) => return usage(message),
        },
        Some(other) => {
            // clap accepts one worker's flags before any command, since
            // they belong to the default one; for another command they
            // would mean nothing, so they are refused, not ignored.
            let given = cli.run.given();
            if !given.is_empty() {
                let name = match &other {
                    Command::Fleet(_) => "fleet",
                    Command::Detect { .. } => "detect",
                    _ => "settings",
                };
                return usage(format!(
                    "{} set one worker's identity or device, for `run`; `{name}` takes no such flag",
                    given.join(", ")
                ));
            }
            other
        }
    };
    cli.common.apply(&mut config);
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
        Command::Fleet(args) => {
            if args.no_cpu {
                config.fleet_cpu_worker = false;
            }
        }
        Command::Detect { .. } => {}
    }
    if let Err(err) = config.validate() {
        return usage(err);
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
            return ExitCode::from(exit::ERROR);
        }
    };
    let outcome = match command {
        Command::Fleet(_) => runtime.block_on(run_fleet(&config, cli.config, &cli.common)),
        _ => runtime.block_on(run_worker(&config)),
    };
    // Abandoned tasks (grace ran out) must not hold the process open.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(err) => {
            // Once, through the log (stderr), which is where the worker's
            // other messages go and what a log collector reads.
            tracing::error!("{}", exit::one_line(err.chain()));
            ExitCode::from(exit_code(&err))
        }
    }
}

/// A setting that cannot work on this host: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadConfig(String);

/// The exit status for an error that ended the worker: see [`exit`].
fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<BadConfig>() {
            return exit::USAGE;
        }
        // A user or password Redis refuses is the configuration's fault.
        if cause.downcast_ref::<redis::RedisError>().is_some_and(|e| {
            e.kind() == redis::ErrorKind::AuthenticationFailed
                || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
        }) {
            return exit::USAGE;
        }
        match cause.downcast_ref::<WorkerError>() {
            Some(WorkerError::Device { .. }) => return exit::USAGE,
            Some(WorkerError::Connect { source, .. }) if source.is_connection() => {
                return exit::UNREACHABLE;
            }
            _ => {}
        }
    }
    exit::ERROR
}

async fn run_worker(config: &Config) -> anyhow::Result<ExitCode> {
    if let Err(why) = fleet::follow_parent() {
        anyhow::bail!("{why}");
    }
    let shutdown = shutdown::on_signals()?;
    let mut kinds = KindTable::with_builtins();
    if config.test_kinds {
        tracing::warn!("test kinds enabled: this worker runs `panic` and `abort` tasks");
        kinds.add_test_kinds();
    }
    let report = tandem_worker::run(config, kinds, shutdown).await?;
    Ok(if report.device_failed.is_some() {
        ExitCode::from(tandem_worker::EXIT_DEVICE_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_fleet(
    config: &Config,
    config_file: Option<PathBuf>,
    common_args: &CommonArgs,
) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown::on_signals()?;
    // Detection fails only on settings (`simulate_gpus`, `device_roles`).
    let detection = Detection::run(config).map_err(BadConfig)?;
    if let Some(note) = &detection.note {
        tracing::warn!("{note}");
    }
    let cpu = config.fleet_cpu_worker;
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
    let shared = common_args.to_args();
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
