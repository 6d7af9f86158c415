//! Kinds every worker runs, for tests, benchmarks and smoke checks.
//!
//! | kind | class | parameters | result |
//! |---|---|---|---|
//! | `noop` | cpu | anything (ignored) | nil |
//! | `sleep` | cpu | `{ms}`, at most one hour | `{slept_ms}` |
//! | `echo` | cpu | anything | the parameters |
//! | `fail` | cpu | `{code, message, retry}` | always fails with that code; retried (with backoff) only when `retry` is true |
//!
//! Fault injection, run only by workers started with `test_kinds = true`:
//!
//! | kind | class | parameters | what it does |
//! |---|---|---|---|
//! | `panic` | cpu | `{message}` | the handler panics |
//! | `abort` | cpu | anything | the worker process aborts (dies at once) |
//! | `gpu_only` | heavy | `{ms}` | sleeps like `sleep`, but has no CPU path: a CPU worker never runs it (a task too large for every live GPU fails with `INSUFFICIENT_GPU_MEMORY`) |
//! | `spin` | cpu | `{ms, ignore_stop}` | `{spun_ms}`: keeps a blocking thread busy for `ms` (at most one hour), reporting its progress each millisecond (throttled by the worker) and looking at its `Stop` between milliseconds, unless `ignore_stop`: then it runs to the end whatever happens (a computation that cannot be stopped, as a GPU kernel) |
//! | `split_sum` | parallel | `{n, block, block_ms, fail_block}` | `{sum, blocks}`: the sum of 1/(i+1) over i < n in blocks of `block`, sleeping `block_ms` per block; splittable, so it exercises split tasks; the shard holding block `fail_block` fails for good |

use serde::{Deserialize, Serialize};

use super::{BadParams, KindSpec};
use crate::task::{Class, ErrorCode};

/// Does nothing: measures the queue's own overhead.
#[derive(Debug)]
pub struct Noop;

impl KindSpec for Noop {
    const KIND: &'static str = "noop";
    const CLASS: Class = Class::Cpu;
    type Params = rmpv::Value;
    type Output = ();
}

/// Sleeps without using a CPU.
#[derive(Debug)]
pub struct Sleep;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SleepParams {
    #[schemars(range(max = Sleep::MAX_MS))]
    pub ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SleepOutput {
    pub slept_ms: u64,
}

impl Sleep {
    pub const MAX_MS: u64 = 3_600_000;
}

impl KindSpec for Sleep {
    const KIND: &'static str = "sleep";
    const CLASS: Class = Class::Cpu;
    type Params = SleepParams;
    type Output = SleepOutput;

    fn validate(params: &SleepParams) -> Result<(), BadParams> {
        if params.ms > Self::MAX_MS {
            return Err(BadParams::new(format!(
                "ms must be at most {} (one hour), got {}",
                Self::MAX_MS,
                params.ms
            )));
        }
        Ok(())
    }
}

/// Returns its parameters.
#[derive(Debug)]
pub struct Echo;

impl KindSpec for Echo {
    const KIND: &'static str = "echo";
    const CLASS: Class = Class::Cpu;
    type Params = rmpv::Value;
    type Output = rmpv::Value;
}

/// Fails with the given error code: exercises error paths end to end.
#[derive(Debug)]
pub struct Fail;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FailParams {
    pub code: String,
    #[serde(default)]
    pub message: String,
    /// Whether the failure is worth retrying (default: no).
    #[serde(default)]
    pub retry: bool,
}

impl KindSpec for Fail {
    const KIND: &'static str = "fail";
    const CLASS: Class = Class::Cpu;
    type Params = FailParams;
    type Output = ();

    fn validate(params: &FailParams) -> Result<(), BadParams> {
        ErrorCode::parse(&params.code)
            .map(|_| ())
            .map_err(|_| BadParams::new(format!(
                "code must be 1-64 upper-case letters, digits or '_', starting with a letter; got {:?}",
                params.code
            )))
    }
}

/// Panics in its handler: exercises panic capture and retries.
#[derive(Debug)]
pub struct Panic;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PanicParams {
    #[serde(default)]
    pub message: String,
}

impl KindSpec for Panic {
    const KIND: &'static str = "panic";
    const CLASS: Class = Class::Cpu;
    type Params = PanicParams;
    type Output = ();
}

/// Aborts the worker process: exercises poison-task detection.
#[derive(Debug)]
pub struct Abort;

impl KindSpec for Abort {
    const KIND: &'static str = "abort";
    const CLASS: Class = Class::Cpu;
    type Params = rmpv::Value;
    type Output = ();
}

/// A test kind that only GPU workers run: it sleeps.
#[derive(Debug)]
pub struct GpuOnly;

impl KindSpec for GpuOnly {
    const KIND: &'static str = "gpu_only";
    const CLASS: Class = Class::Heavy;
    type Params = SleepParams;
    type Output = SleepOutput;

    fn validate(params: &SleepParams) -> Result<(), BadParams> {
        Sleep::validate(params)
    }
}

/// A test kind: a computation on a blocking thread that reports progress,
/// and stops when asked unless told to ignore it.
#[derive(Debug)]
pub struct Spin;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpinParams {
    pub ms: u64,
    /// Never look at the task's `Stop`: run to the end.
    #[serde(default)]
    pub ignore_stop: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpinOutput {
    pub spun_ms: u64,
}

impl KindSpec for Spin {
    const KIND: &'static str = "spin";
    const CLASS: Class = Class::Cpu;
    type Params = SpinParams;
    type Output = SpinOutput;

    fn validate(params: &SpinParams) -> Result<(), BadParams> {
        Sleep::validate(&SleepParams { ms: params.ms })
    }
}

/// A splittable test kind: sums 1/(i+1) over i in 0..n, block by block.
#[derive(Debug)]
pub struct SplitSum;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SplitSumParams {
    pub n: u64,
    /// Terms per block.
    #[serde(default = "SplitSumParams::default_block")]
    pub block: u64,
    /// Sleep per block, to make the work take time (ms).
    #[serde(default)]
    pub block_ms: u64,
    /// The shard computing this block fails, not to be retried.
    #[serde(default)]
    pub fail_block: Option<u64>,
}

impl SplitSumParams {
    fn default_block() -> u64 {
        1_000
    }

    /// The number of blocks.
    pub fn blocks(&self) -> u64 {
        self.n.div_ceil(self.block.max(1))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SplitSumOutput {
    pub sum: f64,
    pub blocks: u64,
}

impl SplitSum {
    pub const MAX_BLOCKS: u64 = 100_000;
}

impl KindSpec for SplitSum {
    const KIND: &'static str = "split_sum";
    const CLASS: Class = Class::Parallel;
    type Params = SplitSumParams;
    type Output = SplitSumOutput;

    fn validate(p: &SplitSumParams) -> Result<(), BadParams> {
        if p.n == 0 || p.block == 0 {
            return Err(BadParams::new("n and block must be at least 1"));
        }
        if p.blocks() > Self::MAX_BLOCKS {
            return Err(BadParams::new(format!(
                "n / block must be at most {} blocks, got {}",
                Self::MAX_BLOCKS,
                p.blocks()
            )));
        }
        if p.block_ms > 10_000 {
            return Err(BadParams::new("block_ms must be at most 10000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack::encode;

    #[test]
    fn builtin_bounds() {
        let check = |kind: &str, params: Vec<u8>, ok: bool| {
            let outcome = crate::kind::validate(kind, &params).expect("built-in");
            assert_eq!(outcome.is_ok(), ok, "{kind}: {outcome:?}");
        };
        check("sleep", encode(&SleepParams { ms: 10 }).unwrap(), true);
        check(
            "sleep",
            encode(&SleepParams {
                ms: Sleep::MAX_MS + 1,
            })
            .unwrap(),
            false,
        );
        check("sleep", encode(&"ten").unwrap(), false);
        check("sleep", Vec::new(), false);
        check("noop", Vec::new(), true);
        check("echo", encode(&vec![1, 2]).unwrap(), true);
        check(
            "fail",
            encode(&FailParams {
                code: "E_BOOM".into(),
                message: String::new(),
                retry: false,
            })
            .unwrap(),
            true,
        );
        check(
            "fail",
            encode(&FailParams {
                code: "boom".into(),
                message: String::new(),
                retry: false,
            })
            .unwrap(),
            false,
        );
        assert!(crate::kind::validate("my_kind", &[]).is_none());
        // Compute kinds are known too: class and memory estimate.
        let known = crate::kind::known(
            "split_sum",
            &encode(&SplitSumParams {
                n: 10,
                block: 5,
                block_ms: 0,
                fail_block: None,
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!((known.class, known.checked), (Class::Parallel, Ok(())));
        let bad = crate::kind::known("monte_carlo", &encode(&"x").unwrap()).unwrap();
        assert_eq!(bad.class, Class::Parallel);
        assert!(bad.checked.is_err());
    }
}
