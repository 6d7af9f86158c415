//! `tandem pause | resume` and `tandem limit set | rm | list`: fleet-wide
//! flow control, kept in each class's flow hash in Redis (see
//! `tandem_shared::flow`). `tandem queues` shows what they say.

use std::process::ExitCode;

use clap::Subcommand;
use tandem_shared::flow::{LimitTarget, PauseTarget, Rate};
use tandem_shared::kind;
use tandem_shared::store::{FlowState, Store};
use tandem_shared::{Class, Config};

use super::errors::Usage;
use super::table;

#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// What to pause or resume: a class (heavy), a class and priority
    /// (heavy:high) or a kind (kind:risk).
    pub target: String,
    /// For a kind: only in this class (default: every class).
    #[arg(long)]
    pub class: Option<Class>,
    /// The kind is one your workers register (not built in).
    #[arg(long)]
    pub custom_kind: bool,
}

#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Sets a rate limit: at most N starts per period, fleet-wide, e.g.
    /// `tandem limit set kind:monte_carlo 100/s` or `tandem limit set
    /// key:vendor-a 5/min` (tasks submitted with --rate-key vendor-a).
    Set {
        /// kind:<kind> or key:<rate key>.
        target: String,
        /// N/period: 100/s, 5/min, 1000/h, 10/250ms, 100/10s.
        rate: String,
        /// Only in this class (default: every class; each class enforces
        /// its own limit).
        #[arg(long)]
        class: Option<Class>,
        /// The kind is one your workers register (not built in).
        #[arg(long)]
        custom_kind: bool,
    },
    /// Removes a rate limit.
    Rm {
        target: String,
        #[arg(long)]
        class: Option<Class>,
        #[arg(long)]
        custom_kind: bool,
    },
    /// Every limit and pause, per class, with when each limit next starts
    /// a task.
    List,
}

fn classes(class: Option<Class>) -> Vec<Class> {
    class.map_or_else(|| Class::ALL.to_vec(), |c| vec![c])
}

fn pause_target(args: &PauseArgs) -> anyhow::Result<PauseTarget> {
    let target: PauseTarget = args
        .target
        .parse()
        .map_err(|e: tandem_shared::flow::FlowError| Usage(e.0))?;
    if let PauseTarget::Kind(name) = &target {
        check_kind(name, args.custom_kind)?;
    } else if args.class.is_some() {
        return Err(Usage(format!(
            "--class only narrows a kind's pause; {target} names its class already"
        ))
        .into());
    }
    Ok(target)
}

/// A kind the CLI does not know is refused (a typo would pause or limit
/// nothing), unless the user says it is one their workers register.
fn check_kind(name: &str, custom: bool) -> Result<(), Usage> {
    if custom || kind::known(name, &[0xc0]).is_some() {
        return Ok(());
    }
    Err(Usage(format!(
        "unknown kind {name:?}: not a built-in kind; for a kind your workers register, add --custom-kind"
    )))
}

pub(crate) async fn pause(config: &Config, args: PauseArgs) -> anyhow::Result<ExitCode> {
    let target = pause_target(&args)?;
    let store = Store::connect_retrying(config).await?;
    let newly = store.pause(&target, &classes(args.class)).await?;
    if newly == 0 {
        println!("{target} was already paused");
    } else {
        println!(
            "paused {target}: running tasks finish; nothing new starts until `tandem resume {target}`; submitting still works"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn resume(config: &Config, args: PauseArgs) -> anyhow::Result<ExitCode> {
    let target = pause_target(&args)?;
    let store = Store::connect_retrying(config).await?;
    let (was, released) = store.resume(&target, &classes(args.class)).await?;
    if was == 0 {
        println!("{target} was not paused");
    } else if released > 0 {
        println!(
            "resumed {target}: {} held tasks go back to their streams",
            table::thousands(released)
        );
    } else {
        println!("resumed {target}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn limit(config: &Config, command: LimitCommand) -> anyhow::Result<ExitCode> {
    let parse_target = |text: &str, custom: bool| -> anyhow::Result<LimitTarget> {
        let target: LimitTarget = text
            .parse()
            .map_err(|e: tandem_shared::flow::FlowError| Usage(e.0))?;
        if let LimitTarget::Kind(name) = &target {
            check_kind(name, custom)?;
        }
        Ok(target)
    };
    match command {
        LimitCommand::Set {
            target,
            rate,
            class,
            custom_kind,
        } => {
            let target = parse_target(&target, custom_kind)?;
            let rate: Rate = rate
                .parse()
                .map_err(|e: tandem_shared::flow::FlowError| Usage(e.0))?;
            let store = Store::connect_retrying(config).await?;
            store.set_limit(&target, rate, &classes(class)).await?;
            println!(
                "{target}: at most {rate} ({} between starts)",
                table::age((rate.interval_us() / 1000.0).round() as u64)
            );
        }
        LimitCommand::Rm {
            target,
            class,
            custom_kind,
        } => {
            let target = parse_target(&target, custom_kind)?;
            let store = Store::connect_retrying(config).await?;
            if store.remove_limit(&target, &classes(class)).await? == 0 {
                println!("{target} had no limit");
            } else {
                println!("{target}: no limit");
            }
        }
        LimitCommand::List => {
            let store = Store::connect_retrying(config).await?;
            let states = store.flow_states(Class::ALL).await?;
            let rows = flow_rows(Class::ALL, &states);
            if rows.len() == 1 {
                println!("no pauses and no rate limits");
            } else {
                print!("{}", table::render(&rows));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per pause and limit: class, what, state, since / next start.
pub(crate) fn flow_rows(classes: &[Class], states: &[FlowState]) -> Vec<Vec<String>> {
    let mut rows = vec![
        ["class", "flow control", "state", "detail"]
            .map(String::from)
            .to_vec(),
    ];
    for (class, state) in classes.iter().zip(states) {
        let since = |ms: u64| format!("since {} ago", table::age(state.now_ms.saturating_sub(ms)));
        if let Some(ms) = state.paused_since_ms {
            rows.push(vec![
                class.to_string(),
                class.to_string(),
                "paused".into(),
                since(ms),
            ]);
        }
        for (priority, ms) in &state.paused_priorities {
            rows.push(vec![
                class.to_string(),
                format!("{class}:{priority}"),
                "paused".into(),
                since(*ms),
            ]);
        }
        for (kind, ms) in &state.paused_kinds {
            let held = state
                .held
                .iter()
                .find(|(k, _)| k == kind)
                .map_or(0, |(_, n)| *n);
            rows.push(vec![
                class.to_string(),
                format!("kind:{kind}"),
                "paused".into(),
                format!("{}, {} tasks held", since(*ms), table::thousands(held)),
            ]);
        }
        for limit in &state.limits {
            let detail = match limit.next_start_ms {
                Some(ms) => format!(
                    "limited: next start in {}",
                    table::age(ms.saturating_sub(state.now_ms))
                ),
                None => "free: the next task starts at once".to_owned(),
            };
            rows.push(vec![
                class.to_string(),
                limit.target.to_string(),
                format!("{}", limit.rate),
                detail,
            ]);
        }
    }
    rows
}
