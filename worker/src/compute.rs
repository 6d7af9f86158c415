//! Compute kinds: a CPU twin, a GPU path, and for splittable kinds, shards
//! and a merge.
//!
//! A kind implements [`Compute`] (and [`Split`] when its work divides into
//! blocks that merge exactly). [`KindTable::register_compute`] and
//! [`KindTable::register_split`] turn it into a handler that runs on the
//! worker's GPU when the kind's kernels loaded there, else on the CPU, on a
//! blocking thread either way (the async runtime never waits on a kernel).
//!
//! Splitting: a splittable task of class `parallel` is cut into shards that
//! run as ordinary tasks on any worker (the executor splits, `split.lua` and
//! `complete.lua` keep the books), and the partial
//! results merge into the parent's result. The rule that makes a split run
//! equal an unsplit one: a kind's work is a sequence of fixed blocks, a shard
//! is a run of whole blocks, a partial keeps one value per block, and the
//! merge combines blocks in block order. The unsplit run is the one-shard
//! split ([`whole`]), so both go through the same code.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tandem_kernels::runtime::Gpu;
use tandem_shared::kind::KindSpec;
use tandem_shared::{ErrorCode, msgpack};

use tokio_util::sync::CancellationToken;

use crate::handler::{Handler, KindTable, Prepared, TaskContext, TaskError};

/// The parameters of a compute kind's spec.
pub type Params<C> = <<C as Compute>::Spec as KindSpec>::Params;
/// The output of a compute kind's spec.
pub type Output<C> = <<C as Compute>::Spec as KindSpec>::Output;

/// A kind that computes: a CPU twin, and a GPU path when it has kernels.
pub trait Compute: Send + Sync + 'static {
    type Spec: KindSpec;
    /// The kernel module (`tandem_kernels::SOURCES`) the GPU path needs;
    /// `None` for a CPU-only kind.
    const MODULE: Option<&'static str>;

    /// The CPU twin. Deterministic: the same parameters give the same
    /// result, bit for bit, whatever the number of threads. A long one
    /// checks `stop` between steps.
    fn cpu(&self, params: &Params<Self>, stop: &Stop) -> Result<Output<Self>, TaskError>;

    /// The GPU path; it agrees with the CPU twin within the kind's stated
    /// tolerance.
    fn gpu(
        &self,
        gpu: &Gpu,
        params: &Params<Self>,
        stop: &Stop,
    ) -> Result<Output<Self>, TaskError> {
        let _ = gpu;
        self.cpu(params, stop)
    }
}

/// A kind whose work divides into blocks that merge exactly.
pub trait Split: Compute {
    /// Which blocks a shard computes.
    type Shard: Serialize + DeserializeOwned + Send + Sync + Clone + 'static;
    /// What a shard returns: one value per block (or what merges exactly).
    type Partial: Serialize + DeserializeOwned + Send + 'static;

    /// Cuts the work into at most `n` shards of whole blocks, in block
    /// order, covering every block once. `n = 1` is the whole task.
    fn split(&self, params: &Params<Self>, n: usize) -> Vec<Self::Shard>;

    fn cpu_shard(
        &self,
        params: &Params<Self>,
        shard: &Self::Shard,
    ) -> Result<Self::Partial, TaskError>;

    fn gpu_shard(
        &self,
        gpu: &Gpu,
        params: &Params<Self>,
        shard: &Self::Shard,
    ) -> Result<Self::Partial, TaskError> {
        let _ = gpu;
        self.cpu_shard(params, shard)
    }

    /// Into how many runs of whole blocks the CPU twin cuts a whole task,
    /// checking [`Stop`] between them (the result is the same bits: a split
    /// run equals an unsplit one). Each run should take tens of
    /// milliseconds and hold enough blocks to keep every core busy.
    fn cpu_steps(&self, params: &Params<Self>) -> usize {
        let _ = params;
        1
    }

    /// Merges the partials of every shard, given in shard order.
    fn merge(
        &self,
        params: &Params<Self>,
        parts: Vec<Self::Partial>,
    ) -> Result<Output<Self>, TaskError>;
}

/// A shard of a kind whose work is a sequence of fixed blocks: blocks
/// `first..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BlockRange {
    pub first: u64,
    pub end: u64,
}

impl BlockRange {
    /// Cuts `blocks` blocks into at most `n` runs of equal length (the last
    /// may be shorter), in block order.
    pub fn split(blocks: u64, n: usize) -> Vec<BlockRange> {
        let per = blocks.div_ceil(n.max(1) as u64).max(1);
        (0..blocks)
            .step_by(usize::try_from(per).unwrap_or(usize::MAX))
            .map(|first| BlockRange {
                first,
                end: (first + per).min(blocks),
            })
            .collect()
    }

    /// The shard's blocks, once checked to lie within the task's `blocks`
    /// (a shard comes from the wire).
    pub fn within(&self, blocks: u64) -> Result<std::ops::Range<u64>, TaskError> {
        if self.first >= self.end || self.end > blocks {
            return Err(TaskError::fatal(
                ErrorCode::BAD_PARAMS,
                format!(
                    "shard blocks {}..{} are outside the task's 0..{blocks}",
                    self.first, self.end
                ),
            ));
        }
        Ok(self.first..self.end)
    }
}

/// A splittable kind run whole, on the GPU when given one: a split run,
/// merged. `Compute::cpu` and `Compute::gpu` of a [`Split`] kind are this.
/// On the GPU it is the one-shard split; on the CPU, [`Split::cpu_steps`]
/// shards run in turn, with a look at `stop` before each.
pub fn whole<S: Split>(
    kind: &S,
    gpu: Option<&Gpu>,
    params: &Params<S>,
    stop: &Stop,
) -> Result<Output<S>, TaskError> {
    let steps = match gpu {
        Some(_) => 1,
        None => kind.cpu_steps(params).max(1),
    };
    let mut parts = Vec::with_capacity(steps);
    for shard in kind.split(params, steps) {
        stop.check()?;
        parts.push(match gpu {
            Some(gpu) => kind.gpu_shard(gpu, params, &shard)?,
            None => kind.cpu_shard(params, &shard)?,
        });
    }
    // A merge may be long too (`portfolio_opt` refines there).
    stop.check()?;
    kind.merge(params, parts)
}

/// [`Split::cpu_steps`] for a kind of `blocks` blocks: runs of at least
/// `min_blocks`, at most 64 runs.
pub fn steps_of(blocks: u64, min_blocks: u64) -> usize {
    usize::try_from(blocks / min_blocks.max(1))
        .unwrap_or(usize::MAX)
        .clamp(1, 64)
}

/// The GPU to use for a kind: the worker's, when the kind's module loaded.
fn gpu_for(module: Option<&str>, ctx: &TaskContext) -> Option<Arc<Gpu>> {
    let module = module?;
    ctx.gpu.clone().filter(|gpu| gpu.has(module))
}

/// Tells a computation that its task was cancelled. Checked between
/// steps (chunks of blocks, epochs): the computation then ends with
/// `CANCELLED` and frees its thread, its slot and its device memory.
#[derive(Debug, Clone)]
pub struct Stop(CancellationToken);

impl Stop {
    pub fn new(cancel: CancellationToken) -> Self {
        Self(cancel)
    }

    /// A flag that is never set (benches, tests).
    pub fn never() -> Self {
        Self(CancellationToken::new())
    }

    pub fn is_set(&self) -> bool {
        self.0.is_cancelled()
    }

    /// `Err(CANCELLED)` once the task was cancelled.
    pub fn check(&self) -> Result<(), TaskError> {
        if self.is_set() {
            return Err(TaskError::fatal(
                ErrorCode::CANCELLED,
                "cancelled by a producer while running",
            ));
        }
        Ok(())
    }
}

/// Counts a task's computations on blocking threads. A blocking thread
/// cannot be dropped like a future: after a cancel, the executor waits
/// here until every one has returned (they check [`Stop`]), so the task's
/// slot and device memory are not handed to the next task while its
/// computation still runs.
#[derive(Debug, Clone, Default)]
pub struct Work(Arc<WorkState>);

#[derive(Debug, Default)]
struct WorkState {
    running: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

/// Held by a blocking thread while its computation runs.
struct WorkGuard(Arc<WorkState>);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

impl Work {
    fn enter(&self) -> WorkGuard {
        self.0.running.fetch_add(1, Ordering::AcqRel);
        WorkGuard(Arc::clone(&self.0))
    }

    /// Completes when no computation of the task runs.
    pub async fn finished(&self) {
        loop {
            let done = self.0.done.notified();
            if self.0.running.load(Ordering::Acquire) == 0 {
                return;
            }
            done.await;
        }
    }
}

/// Runs `work` on a blocking thread, counted in the task's [`Work`] and
/// given its [`Stop`]; a panic there is a failed attempt.
pub(crate) async fn blocking<T: Send + 'static>(
    ctx: &TaskContext,
    work: impl FnOnce(&Stop) -> Result<T, TaskError> + Send + 'static,
) -> Result<T, TaskError> {
    let running = ctx.work().enter();
    let stop = ctx.stop();
    let work = move || {
        let _running = running;
        work(&stop)
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(TaskError::new(
            ErrorCode::HANDLER_PANIC,
            format!("the computation panicked: {join}"),
        )),
    }
}

/// A [`Compute`] kind as a [`Handler`].
struct Computing<C>(Arc<C>);

impl<C: Compute> Handler for Computing<C> {
    type Spec = C::Spec;

    async fn run(&self, params: Params<C>, ctx: TaskContext) -> Result<Output<C>, TaskError> {
        let kind = Arc::clone(&self.0);
        let gpu = gpu_for(C::MODULE, &ctx);
        blocking(&ctx, move |stop| match gpu {
            Some(gpu) => kind.gpu(&gpu, &params, stop),
            None => kind.cpu(&params, stop),
        })
        .await
    }
}

/// A shard's task parameters: the parent's parameters and the shard.
#[derive(serde::Serialize, serde::Deserialize)]
struct ShardTask<P, S> {
    params: P,
    shard: S,
}

/// The split operations of a kind, with the types erased (MessagePack in
/// and out), as the executor calls them.
pub(crate) trait Splitter: Send + Sync {
    /// Shard task parameters for at most `n` shards.
    fn split(&self, params: &[u8], n: usize) -> Result<Vec<Vec<u8>>, TaskError>;
    /// Runs one shard; returns its partial.
    fn run_shard(&self, shard: &[u8], ctx: &TaskContext) -> Result<Prepared, TaskError>;
    /// Merges partials (in shard order) into the parent's result.
    fn merge(&self, params: &[u8], parts: &[Vec<u8>]) -> Result<Vec<u8>, TaskError>;
}

struct Splitting<S>(Arc<S>);

/// Decodes a task's parameters (a whole task's, or a shard's with the
/// shard): errors as [`crate::handler`] reports them for any kind.
fn decode_params<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, TaskError> {
    msgpack::decode_params(bytes).map_err(|e| crate::handler::decode_error(&e))
}

/// Decodes a shard's partial result, written by the worker that ran it: one
/// that does not decode is a bad result, whatever is wrong with it.
fn decode_partial<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TaskError> {
    msgpack::decode(bytes)
        .map_err(|e| TaskError::fatal(ErrorCode::BAD_RESULT, format!("partial result: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, TaskError> {
    msgpack::encode(value).map_err(|e| TaskError::fatal(ErrorCode::BAD_RESULT, e.to_string()))
}

impl<S: Split> Splitter for Splitting<S>
where
    Params<S>: Clone + Sync,
{
    fn split(&self, params: &[u8], n: usize) -> Result<Vec<Vec<u8>>, TaskError> {
        let params: Params<S> = decode_params(params)?;
        <S::Spec as KindSpec>::validate(&params)
            .map_err(|e| TaskError::fatal(ErrorCode::BAD_PARAMS, e.0))?;
        self.0
            .split(&params, n.max(1))
            .into_iter()
            .map(|shard| {
                encode(&ShardTask {
                    params: params.clone(),
                    shard,
                })
            })
            .collect()
    }

    fn run_shard(&self, shard: &[u8], ctx: &TaskContext) -> Result<Prepared, TaskError> {
        let task: ShardTask<Params<S>, S::Shard> = decode_params(shard)?;
        let kind = Arc::clone(&self.0);
        let gpu = gpu_for(S::MODULE, ctx);
        let ctx = ctx.clone();
        Ok(Box::pin(async move {
            // A shard is one step: it looks at the cancel before it starts.
            let partial = blocking(&ctx, move |stop| {
                stop.check()?;
                match gpu {
                    Some(gpu) => kind.gpu_shard(&gpu, &task.params, &task.shard),
                    None => kind.cpu_shard(&task.params, &task.shard),
                }
            })
            .await?;
            encode(&partial)
        }))
    }

    fn merge(&self, params: &[u8], parts: &[Vec<u8>]) -> Result<Vec<u8>, TaskError> {
        let params: Params<S> = decode_params(params)?;
        let parts = parts
            .iter()
            .map(|p| decode_partial::<S::Partial>(p))
            .collect::<Result<Vec<_>, _>>()?;
        encode(&self.0.merge(&params, parts)?)
    }
}

impl KindTable {
    /// Adds a compute kind.
    pub fn register_compute<C: Compute>(&mut self, kind: C) -> &mut Self {
        self.register(Computing(Arc::new(kind)))
    }

    /// Adds a splittable compute kind: it runs whole like any kind, and its
    /// `parallel` tasks can be split into shards across workers.
    pub fn register_split<S: Split>(&mut self, kind: S) -> &mut Self
    where
        Params<S>: Clone + Sync,
    {
        let kind = Arc::new(kind);
        self.add_splitter(
            <S::Spec as KindSpec>::KIND,
            Arc::new(Splitting(Arc::clone(&kind))),
        );
        self.register(Computing(kind))
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::kind::builtin::{SplitSumOutput, SplitSumParams};

    use super::*;
    use crate::builtin::SplitSum;

    #[tokio::test]
    async fn a_split_run_equals_the_whole_run_bit_for_bit() {
        let mut kinds = KindTable::new();
        kinds.register_split(SplitSum);
        let splitter = kinds.splitter("split_sum").expect("registered");
        let params = SplitSumParams {
            n: 12_345,
            block: 10,
            block_ms: 0,
            fail_block: None,
        };
        let encoded = msgpack::encode(&params).unwrap();
        // Run whole, it goes in 64 steps (1,235 blocks, 2 at the least).
        assert_eq!(SplitSum.cpu_steps(&params), 64);
        let whole = SplitSum.cpu(&params, &Stop::never()).unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert_eq!(
            SplitSum.cpu(&params, &Stop::new(cancel)).unwrap_err().code,
            ErrorCode::CANCELLED
        );
        // A shard of a cancelled task does not start.
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        let ctx = TaskContext::new(tandem_shared::TaskId::new(), 1, "cpu".into(), cancelled);
        let shard = splitter.split(&encoded, 2).unwrap().remove(0);
        let refused = splitter.run_shard(&shard, &ctx).unwrap().await;
        assert_eq!(refused.unwrap_err().code, ErrorCode::CANCELLED);
        for n in [1, 2, 7, 200, 5_000] {
            let shards = splitter.split(&encoded, n).unwrap();
            assert!(shards.len() <= n);
            let ctx = TaskContext::for_test();
            let mut parts = Vec::new();
            for shard in &shards {
                parts.push(splitter.run_shard(shard, &ctx).unwrap().await.unwrap());
            }
            let merged: SplitSumOutput =
                msgpack::decode(&splitter.merge(&encoded, &parts).unwrap()).unwrap();
            assert_eq!(merged.sum.to_bits(), whole.sum.to_bits(), "{n} shards");
            assert_eq!(merged.blocks, 1_235);
            // A missing shard is an error, not a wrong sum.
            if parts.len() > 1 {
                parts.pop();
                assert_eq!(
                    splitter.merge(&encoded, &parts).unwrap_err().code,
                    ErrorCode::BAD_RESULT
                );
            }
        }
        let bad = msgpack::encode(&SplitSumParams { n: 0, ..params }).unwrap();
        assert!(
            BlockRange { first: 5, end: 99 }
                .within(50)
                .unwrap_err()
                .message
                .contains("outside")
        );
        assert_eq!(BlockRange::split(10, 3).len(), 3);
        assert_eq!(BlockRange::split(10, 30).len(), 10);
        assert_eq!(
            splitter.split(&bad, 2).unwrap_err().code,
            ErrorCode::BAD_PARAMS
        );
    }
}
