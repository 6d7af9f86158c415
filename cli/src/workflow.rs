//! `tandem flow submit FILE | status ID | cancel ID`: workflows, graphs of
//! tasks submitted as one unit, from a JSON or YAML file (the shape is
//! `tandem_shared::workflow::spec`). The word `flow` on the command line;
//! `workflow` in the code, where "flow" means flow control (`flow.rs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tandem_producer::{NodeState, Producer, Task, Workflow, WorkflowCancel, WorkflowState};
use tandem_shared::workflow::spec::WorkflowSpec;
use tandem_shared::{Config, TaskId, exit, msgpack};

use super::errors::Usage;
use super::table;

#[derive(Debug, clap::Subcommand)]
pub enum WorkflowCommand {
    /// Submit a workflow file (JSON, or YAML when it ends in .yaml/.yml);
    /// prints the workflow's id.
    Submit(SubmitArgs),
    /// A workflow's graph: each node's state, device and times, and the
    /// workflow's result (its sink nodes' results) once final.
    Status(StatusArgs),
    /// Cancel every node of a workflow that has not finished.
    Cancel(CancelArgs),
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    pub file: PathBuf,
    /// Wait for the workflow to finish and show its status.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in ms.
    #[arg(long, default_value_t = 300_000)]
    pub timeout_ms: u64,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    pub id: TaskId,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    pub id: TaskId,
}

pub(crate) async fn run(config: &Config, command: WorkflowCommand) -> anyhow::Result<ExitCode> {
    match command {
        WorkflowCommand::Submit(args) => submit(config, args).await,
        WorkflowCommand::Status(args) => status(config, args).await,
        WorkflowCommand::Cancel(args) => cancel(config, args).await,
    }
}

/// Reads a workflow file: YAML by its extension, else JSON.
pub(crate) fn read_spec(path: &std::path::Path) -> anyhow::Result<WorkflowSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Usage(format!("cannot read {}: {e}", path.display())))?;
    let yaml = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    let spec = if yaml {
        serde_norway::from_str(&text).map_err(|e| Usage(format!("{}: {e}", path.display())))?
    } else {
        serde_json::from_str(&text).map_err(|e| Usage(format!("{}: {e}", path.display())))?
    };
    Ok(spec)
}

/// The workflow a file describes, as the producer library builds it.
pub(crate) fn workflow_of(spec: WorkflowSpec) -> anyhow::Result<Workflow> {
    let mut workflow = Workflow::new().on_failure(spec.on_failure);
    for node in spec.nodes {
        let mut task = Task::raw(node.kind.clone(), msgpack::encode(&node.params)?);
        if let Some(class) = node.class {
            task = task.class(class);
        }
        if let Some(priority) = node.priority {
            task = task.priority(priority);
        }
        if let Some(attempts) = node.max_attempts {
            task = task.max_attempts(attempts);
        }
        if let Some(bytes) = node.memory_bytes {
            task = task.memory_bytes(bytes);
        }
        if let Some(ms) = node.timeout_ms {
            task = task.timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = node.deadline_ms {
            task = task.deadline(Duration::from_millis(ms));
        }
        if let Some(ms) = node.delay_ms {
            task = task.delay(Duration::from_millis(ms));
        }
        let parents: Vec<&str> = node.after.iter().map(String::as_str).collect();
        workflow = workflow.node_after(&node.name, task, &parents);
    }
    Ok(workflow)
}

async fn submit(config: &Config, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let workflow = workflow_of(read_spec(&args.file)?)?;
    let producer = Producer::connect(config).await?;
    let handle = producer.submit_workflow(workflow).await?;
    if !args.wait {
        println!("{}", handle.id());
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("submitted workflow {}", handle.id());
    let outcome = handle.wait(Duration::from_millis(args.timeout_ms)).await?;
    let mut state = producer
        .workflow_state(outcome.id)
        .await?
        .ok_or(tandem_producer::ProducerError::WorkflowNotFound(outcome.id))?;
    resolve_sinks(&producer, &mut state).await;
    print!("{}", render(&state));
    Ok(exit_of(&state))
}

/// The sinks' results that came back as blob references (above
/// `blob_threshold_bytes`), replaced by the blobs' bytes: what is shown is
/// the workflow's result, not where it lies. A blob that cannot be read
/// (expired, or the store unreachable) leaves the reference, with a
/// warning naming the node.
async fn resolve_sinks(producer: &Producer, state: &mut WorkflowState) {
    for node in &mut state.nodes {
        if !state.sinks.contains(&node.graph.name) {
            continue;
        }
        match producer.resolve_result(node.record.result.as_deref()).await {
            Ok(Some(bytes)) => node.record.result = Some(bytes),
            Ok(None) => {}
            Err(err) => eprintln!(
                "warning: node {:?}'s result is a blob that cannot be read ({err}); its reference is shown",
                node.graph.name
            ),
        }
    }
}

async fn status(config: &Config, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let producer = Producer::connect(config).await?;
    let Some(mut state) = producer.workflow_state(args.id).await? else {
        eprintln!(
            "workflow {} not found (never submitted, or expired after result_ttl_s)",
            args.id
        );
        return Ok(ExitCode::from(exit::NOT_FOUND));
    };
    resolve_sinks(&producer, &mut state).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&state))?);
    } else {
        print!("{}", render(&state));
    }
    Ok(ExitCode::SUCCESS)
}

async fn cancel(config: &Config, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let producer = Producer::connect(config).await?;
    match producer.cancel_workflow(args.id).await? {
        WorkflowCancel::NotFound => {
            eprintln!("workflow {} not found", args.id);
            Ok(ExitCode::from(exit::NOT_FOUND))
        }
        WorkflowCancel::Finished(status) => {
            println!("workflow {} had already finished: {status}", args.id);
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCancel::Cancelled { ended, asked } => {
            println!(
                "workflow {}: {ended} nodes cancelled, {asked} running nodes asked to stop",
                args.id
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit_of(state: &WorkflowState) -> ExitCode {
    if state.status == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::TASK_FAILED)
    }
}

/// When the node could start: its release by its last parent, else its
/// submission (a node without parents).
fn ready_at_ms(node: &NodeState) -> Option<u64> {
    node.released_at_ms.or(node.record.submitted_at_ms)
}

/// When the node started: its first shard's start for a split node (its
/// `started_at_ms` is its merge's), else its start.
fn started_at_ms(node: &NodeState) -> Option<u64> {
    node.record
        .shards_started_at_ms
        .or(node.record.started_at_ms)
}

/// The node's wait between becoming ready and starting, ms.
pub(crate) fn wait_ms(node: &NodeState) -> Option<u64> {
    Some(started_at_ms(node)?.saturating_sub(ready_at_ms(node)?))
}

/// How long the node ran, µs: for a split node from its first shard's
/// start to its merge's commit (its `run_us` is the merge's alone).
pub(crate) fn ran_us(node: &NodeState) -> Option<u64> {
    match (node.record.shards_started_at_ms, node.record.finished_at_ms) {
        (Some(first), Some(finished)) => Some(finished.saturating_sub(first).saturating_mul(1000)),
        _ => node.record.run_us,
    }
}

fn result_json(node: &NodeState) -> serde_json::Value {
    match &node.record.result {
        Some(bytes) => msgpack::decode::<serde_json::Value>(bytes)
            .unwrap_or_else(|_| serde_json::Value::String(msgpack::to_display(bytes))),
        None => serde_json::Value::Null,
    }
}

pub(crate) fn render(state: &WorkflowState) -> String {
    render_with(state, |device| device.to_owned())
}

/// [`render`], each device shown as `describe` says (`tandem demo
/// --trading --pipeline` names the fleet's GPUs, simulated or real).
pub(crate) fn render_with(state: &WorkflowState, describe: impl Fn(&str) -> String) -> String {
    let mut out = format!(
        "workflow {}  {}  (on failure: {})",
        state.id, state.status, state.on_failure
    );
    if let (Some(start), Some(end)) = (state.submitted_at_ms, state.finished_at_ms) {
        out.push_str(&format!(
            "  took {} ms",
            table::ms(end.saturating_sub(start) as f64)
        ));
    }
    out.push('\n');
    let mut rows = vec![
        [
            "node", "kind", "class", "status", "worker", "device", "after", "waited", "ran",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    let mut errors = Vec::new();
    for node in &state.nodes {
        let record = &node.record;
        rows.push(vec![
            node.graph.name.clone(),
            node.graph.kind.clone(),
            node.graph.class.to_string(),
            node.status.clone(),
            record.worker.clone().unwrap_or_else(|| "-".into()),
            record.device.as_deref().map_or("-".into(), &describe),
            if node.graph.parents.is_empty() {
                "-".into()
            } else {
                node.graph.parents.join(",")
            },
            wait_ms(node).map_or("-".into(), |ms| table::ms(ms as f64)),
            ran_us(node).map_or("-".into(), table::micros),
        ]);
        if let Some(failure) = &record.error {
            errors.push(format!(
                "  {}: {}: {}\n",
                node.graph.name, failure.code, failure.message
            ));
        }
    }
    out.push_str(&table::render(&rows));
    if !errors.is_empty() {
        out.push_str("errors:\n");
        out.push_str(&errors.concat());
    }
    if state.is_final() {
        out.push_str("result (sink nodes):\n");
        for node in state
            .nodes
            .iter()
            .filter(|n| state.sinks.contains(&n.graph.name))
        {
            out.push_str(&format!("  {}: {}\n", node.graph.name, result_json(node)));
        }
    }
    out
}

pub(crate) fn to_json(state: &WorkflowState) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = state
        .nodes
        .iter()
        .map(|node| {
            let record = &node.record;
            serde_json::json!({
                "name": node.graph.name,
                "id": node.graph.id.to_string(),
                "kind": node.graph.kind,
                "class": node.graph.class.as_str(),
                "after": node.graph.parents,
                "status": node.status,
                "worker": record.worker,
                "device": record.device,
                "attempt": record.attempt,
                "released_at_ms": node.released_at_ms,
                "started_at_ms": record.started_at_ms,
                "finished_at_ms": record.finished_at_ms,
                "shards_started_at_ms": record.shards_started_at_ms,
                "waited_ms": wait_ms(node),
                "run_us": record.run_us,
                "error_code": record.error.as_ref().map(|e| e.code.to_string()),
                "error_message": record.error.as_ref().map(|e| e.message.clone()),
            })
        })
        .collect();
    let results: serde_json::Map<String, serde_json::Value> = state
        .nodes
        .iter()
        .filter(|n| state.sinks.contains(&n.graph.name) && n.record.result.is_some())
        .map(|n| (n.graph.name.clone(), result_json(n)))
        .collect();
    serde_json::json!({
        "id": state.id.to_string(),
        "status": state.status,
        "on_failure": state.on_failure,
        "submitted_at_ms": state.submitted_at_ms,
        "finished_at_ms": state.finished_at_ms,
        "sinks": state.sinks,
        "result": results,
        "nodes": nodes,
    })
}
