//! Split tasks: a splittable kind ([`Split`]) cut into shards that run as
//! ordinary tasks on any worker, and the merge of their partial results
//! into the parent's result. The executor plans the shards
//! (`shard_entries`), runs a shard (`run_shard_entry`) and a merge entry
//! (`merge_entry`) through the kind's type-erased `Splitter`, which
//! `KindTable::register_split` makes; `split.lua` and `complete.lua` keep
//! the books.
//!
//! The rule that makes a split run equal an unsplit one: a kind's work is a
//! sequence of fixed blocks, a shard is a run of whole blocks, a partial
//! keeps one value per block, and the merge combines blocks in block order.
//! The unsplit run is the one-shard split ([`whole`]), so both go through
//! the same code.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tandem_kernels::runtime::Gpu;
use tandem_shared::kind::KindSpec;
use tandem_shared::signature::Signer;
use tandem_shared::wire::TaskEntry;
use tandem_shared::{ErrorCode, TaskId, msgpack};

use crate::compute::{Compute, Output, Params, gpu_for};
use crate::context::{Stop, TaskContext, blocking};
use crate::error::{TaskError, decode_error};
use crate::handler::Prepared;

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
    let shards = kind.split(params, steps);
    let count = shards.len();
    for shard in shards {
        stop.check()?;
        parts.push(match gpu {
            Some(gpu) => kind.gpu_shard(gpu, params, &shard)?,
            None => kind.cpu_shard(params, &shard)?,
        });
        // Progress by steps (runs of blocks: path batches for the Monte
        // Carlo kinds); the merge is the rest.
        let done = parts.len();
        stop.progress(done as f64 / count as f64, || {
            format!("step {done} of {count}")
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

/// A shard's task parameters: the parent's parameters and the shard.
#[derive(serde::Serialize, serde::Deserialize)]
struct ShardTask<P, S> {
    params: P,
    shard: S,
}

/// A [`ShardTask`]'s bytes from the task's parameters as they came (they
/// decoded as the kind's, unknown fields refused) and the encoded shard:
/// the map `{params, shard}` that encoding a `ShardTask` writes, without
/// encoding the parameters again for every shard (a covariance matrix of
/// thousands of values, once a shard, is what made cutting slow).
fn shard_task(params: &[u8], shard: &[u8]) -> Vec<u8> {
    // Empty parameters read as nil (`msgpack::decode`).
    let params: &[u8] = if params.is_empty() { &[0xc0] } else { params };
    let mut out = Vec::with_capacity(params.len() + shard.len() + 14);
    // A map of 2; fixstr "params"; the parameters; fixstr "shard"; the shard.
    out.push(0x82);
    out.push(0xa0 | 6);
    out.extend_from_slice(b"params");
    out.extend_from_slice(params);
    out.push(0xa0 | 5);
    out.extend_from_slice(b"shard");
    out.extend_from_slice(shard);
    out
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

/// A [`Split`] kind as a [`Splitter`].
pub(crate) struct Splitting<S>(pub Arc<S>);

/// Decodes a task's parameters (a whole task's, or a shard's with the
/// shard): errors as [`crate::error::decode_error`] reports them for any
/// kind.
fn decode_params<T: Serialize + DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, TaskError> {
    msgpack::decode_params(bytes).map_err(|e| decode_error(&e))
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
    fn split(&self, bytes: &[u8], n: usize) -> Result<Vec<Vec<u8>>, TaskError> {
        let params: Params<S> = decode_params(bytes)?;
        <S::Spec as KindSpec>::validate(&params)
            .map_err(|e| TaskError::fatal(ErrorCode::BAD_PARAMS, e.0))?;
        self.0
            .split(&params, n.max(1))
            .into_iter()
            .map(|shard| Ok(shard_task(bytes, &encode(&shard)?)))
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

/// The shard entries of a splittable task: its parameters cut into at most
/// `split_into` shards, each a new task of its own that carries the
/// parent's, signed when tasks must carry a signature. `None` when the
/// kind cuts it into fewer than 2: it runs whole.
pub(crate) fn shard_entries(
    splitter: &dyn Splitter,
    entry: &TaskEntry,
    split_into: u32,
    signer: Option<&Signer>,
) -> Result<Option<Vec<TaskEntry>>, TaskError> {
    let params = splitter.split(&entry.params, split_into as usize)?;
    if params.len() < 2 {
        return Ok(None);
    }
    let count = u32::try_from(params.len()).unwrap_or(u32::MAX);
    let shards = params
        .into_iter()
        .zip(0..)
        .map(|(params, index)| {
            let mut shard = entry.shard(TaskId::new(), index, count, params);
            shard.signature = signer.map(|s| s.sign(&shard.signed()));
            shard
        })
        .collect();
    Ok(Some(shards))
}

/// A shard entry, ready to run: its params (the parent's and the shard)
/// decoded for the kind's splitter.
pub(crate) fn run_shard_entry(
    splitter: &dyn Splitter,
    params: &[u8],
    ctx: &TaskContext,
) -> Result<Prepared, TaskError> {
    splitter.run_shard(params, ctx).map_err(|err| {
        // The splitting worker wrote these params and checked them: params
        // of another shape mean the entry is no shard of a split.
        if err.code != ErrorCode::BAD_PARAMS && err.code != ErrorCode::BAD_PAYLOAD {
            return err;
        }
        TaskError::fatal(
            ErrorCode::BAD_PAYLOAD,
            format!(
                "fields parent, shard and shards mark a shard, but its params are not a shard's \
                 (a map of params and shard, written by the splitting worker): {}",
                err.message
            ),
        )
    })
}

/// A merge entry, ready to run: the shards' partials (in shard order)
/// merged into the parent's result on a blocking thread, counted in the
/// task's work like any computation.
pub(crate) fn merge_entry(
    splitter: Arc<dyn Splitter>,
    params: Vec<u8>,
    parts: Vec<Vec<u8>>,
    ctx: &TaskContext,
) -> Prepared {
    let merge_ctx = ctx.clone();
    Box::pin(async move { blocking(&merge_ctx, move |_| splitter.merge(&params, &parts)).await })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A shard task spliced from the parameters' bytes is the one encoding
    /// a `ShardTask` writes, and decodes to the same parameters and shard.
    #[test]
    fn a_spliced_shard_task_is_the_encoded_one() {
        let params: BTreeMap<String, Vec<f64>> = [
            ("covariance".to_owned(), vec![0.25, -1.5e-3, 3.0]),
            ("mu".to_owned(), vec![1.0, 2.0]),
        ]
        .into();
        let shard = BlockRange { first: 3, end: 7 };
        let bytes = msgpack::encode(&params).unwrap();
        let spliced = shard_task(&bytes, &msgpack::encode(&shard).unwrap());
        let encoded = msgpack::encode(&ShardTask {
            params: params.clone(),
            shard,
        })
        .unwrap();
        assert_eq!(spliced, encoded);
        let back: ShardTask<BTreeMap<String, Vec<f64>>, BlockRange> =
            msgpack::decode_params(&spliced).unwrap();
        assert_eq!((back.params, back.shard), (params, shard));
        // Empty parameters (a kind that takes none) are nil.
        let none: ShardTask<(), BlockRange> =
            msgpack::decode_params(&shard_task(&[], &msgpack::encode(&shard).unwrap())).unwrap();
        assert_eq!(none.shard, shard);
    }
}
