//! Handlers of the built-in kinds (`noop`, `sleep`, `echo`, `fail`) and of
//! the test kinds (`panic`, `abort`, `gpu_only`, `spin`, `split_sum`),
//! whose specs live in `tandem_shared::kind::builtin`.

use std::time::Duration;

use tandem_shared::ErrorCode;
use tandem_shared::kind::builtin::{
    Abort, Echo, Fail, FailParams, Noop, Panic, PanicParams, Sleep, SleepOutput, SleepParams, Spin,
    SpinOutput, SpinParams, SplitSumOutput, SplitSumParams,
};

use crate::compute::Compute;
use crate::context::{Stop, TaskContext, blocking};
use crate::error::TaskError;
use crate::handler::Handler;
use crate::kind_table::KindTable;
use crate::split::{BlockRange, Split, steps_of, whole};

pub(crate) fn register(kinds: &mut KindTable) {
    kinds
        .register(NoopHandler)
        .register(SleepHandler)
        .register(EchoHandler)
        .register(FailHandler);
}

/// The fault-injection kinds; see `tandem_shared::kind::builtin`.
pub(crate) fn register_test_kinds(kinds: &mut KindTable) {
    kinds
        .register(PanicHandler)
        .register(AbortHandler)
        .register(GpuOnlyHandler)
        .register(SpinHandler)
        .register_split(SplitSum);
}

/// The `spin` test kind: a blocking computation, stoppable or not.
#[derive(Debug)]
struct SpinHandler;

impl Handler for SpinHandler {
    type Spec = Spin;

    async fn run(&self, params: SpinParams, ctx: TaskContext) -> Result<SpinOutput, TaskError> {
        blocking(&ctx, move |stop| spin(&params, stop)).await
    }
}

/// Spins for `params.ms`, a millisecond at a time.
fn spin(params: &SpinParams, stop: &Stop) -> Result<SpinOutput, TaskError> {
    let started = std::time::Instant::now();
    let total = Duration::from_millis(params.ms);
    loop {
        let spun = started.elapsed();
        if spun >= total {
            return Ok(SpinOutput { spun_ms: params.ms });
        }
        if !params.ignore_stop {
            stop.check()?;
        }
        let done = spun.as_secs_f64() / total.as_secs_f64();
        stop.progress(done, || {
            format!("spun {} of {} ms", spun.as_millis(), params.ms)
        });
        std::thread::sleep(Duration::from_millis(1).min(total - spun));
    }
}

/// The `gpu_only` test kind: sleeps, on GPU workers only.
#[derive(Debug)]
struct GpuOnlyHandler;

impl Handler for GpuOnlyHandler {
    type Spec = tandem_shared::kind::builtin::GpuOnly;
    const CPU_PATH: bool = false;

    async fn run(&self, params: SleepParams, ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        SleepHandler.run(params, ctx).await
    }
}

/// The `split_sum` test kind: blocks of 1/(i+1), merged in block order.
#[derive(Debug)]
pub(crate) struct SplitSum;

impl Compute for SplitSum {
    type Spec = tandem_shared::kind::builtin::SplitSum;
    const MODULE: Option<&'static str> = None;

    fn cpu(&self, params: &SplitSumParams, stop: &Stop) -> Result<SplitSumOutput, TaskError> {
        whole(self, None, params, stop)
    }
}

impl Split for SplitSum {
    type Shard = BlockRange;
    /// One sum per block.
    type Partial = Vec<f64>;

    fn split(&self, params: &SplitSumParams, n: usize) -> Vec<BlockRange> {
        BlockRange::split(params.blocks(), n)
    }

    /// Whole runs go in steps of two blocks, so that the tests of the
    /// stepping see several.
    fn cpu_steps(&self, params: &SplitSumParams) -> usize {
        steps_of(params.blocks(), 2)
    }

    fn cpu_shard(&self, p: &SplitSumParams, shard: &BlockRange) -> Result<Vec<f64>, TaskError> {
        let blocks = shard.within(p.blocks())?;
        if p.fail_block.is_some_and(|b| blocks.contains(&b)) {
            return Err(TaskError::fatal(
                ErrorCode::from_static("SPLIT_SUM_FAILED"),
                format!(
                    "block {} failed, as asked",
                    p.fail_block.unwrap_or_default()
                ),
            ));
        }
        Ok(blocks
            .map(|b| {
                std::thread::sleep(Duration::from_millis(p.block_ms));
                (b * p.block..((b + 1) * p.block).min(p.n))
                    .map(|i| 1.0 / (i as f64 + 1.0))
                    .sum()
            })
            .collect())
    }

    fn merge(&self, p: &SplitSumParams, parts: Vec<Vec<f64>>) -> Result<SplitSumOutput, TaskError> {
        let sums: Vec<f64> = parts.into_iter().flatten().collect();
        if sums.len() as u64 != p.blocks() {
            return Err(TaskError::fatal(
                ErrorCode::BAD_RESULT,
                format!(
                    "the shards hold {} blocks, expected {}",
                    sums.len(),
                    p.blocks()
                ),
            ));
        }
        Ok(SplitSumOutput {
            sum: sums.iter().sum(),
            blocks: p.blocks(),
        })
    }
}

#[derive(Debug)]
struct PanicHandler;

impl Handler for PanicHandler {
    type Spec = Panic;

    async fn run(&self, params: PanicParams, _ctx: TaskContext) -> Result<(), TaskError> {
        panic!("{}", params.message)
    }
}

#[derive(Debug)]
struct AbortHandler;

impl Handler for AbortHandler {
    type Spec = Abort;

    async fn run(&self, _params: rmpv::Value, ctx: TaskContext) -> Result<(), TaskError> {
        tracing::error!(task = %ctx.id, "abort task: killing this worker process, as asked");
        std::process::abort()
    }
}

#[derive(Debug)]
struct NoopHandler;

impl Handler for NoopHandler {
    type Spec = Noop;

    async fn run(&self, _params: rmpv::Value, _ctx: TaskContext) -> Result<(), TaskError> {
        Ok(())
    }
}

#[derive(Debug)]
struct SleepHandler;

impl Handler for SleepHandler {
    type Spec = Sleep;

    async fn run(&self, params: SleepParams, _ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        tokio::time::sleep(Duration::from_millis(params.ms)).await;
        Ok(SleepOutput {
            slept_ms: params.ms,
        })
    }
}

#[derive(Debug)]
struct EchoHandler;

impl Handler for EchoHandler {
    type Spec = Echo;

    async fn run(&self, params: rmpv::Value, _ctx: TaskContext) -> Result<rmpv::Value, TaskError> {
        Ok(params)
    }
}

#[derive(Debug)]
struct FailHandler;

impl Handler for FailHandler {
    type Spec = Fail;

    async fn run(&self, params: FailParams, _ctx: TaskContext) -> Result<(), TaskError> {
        // Validation already checked the code; fall back rather than panic.
        let code = ErrorCode::parse(&params.code).unwrap_or(ErrorCode::HANDLER_ERROR);
        Err(if params.retry {
            TaskError::new(code, params.message)
        } else {
            TaskError::fatal(code, params.message)
        })
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::{TaskId, msgpack};
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn ctx() -> TaskContext {
        TaskContext::new(TaskId::new(), 1, "cpu".into(), CancellationToken::new())
    }

    async fn run(kind: &str, params: &[u8]) -> Result<Vec<u8>, TaskError> {
        KindTable::with_builtins()
            .prepare(kind, params, ctx())?
            .await
    }

    #[tokio::test]
    async fn builtins_run() {
        let echoed = run("echo", &msgpack::encode(&vec!["a", "b"]).unwrap())
            .await
            .unwrap();
        assert_eq!(msgpack::decode::<Vec<String>>(&echoed).unwrap(), ["a", "b"]);

        let slept = run("sleep", &msgpack::encode(&SleepParams { ms: 1 }).unwrap())
            .await
            .unwrap();
        assert_eq!(msgpack::decode::<SleepOutput>(&slept).unwrap().slept_ms, 1);

        let noop = run("noop", &[]).await.unwrap();
        assert_eq!(noop, vec![0xc0]);

        let failed = run(
            "fail",
            &msgpack::encode(&FailParams {
                code: "E_TEST".into(),
                message: "as asked".into(),
                retry: false,
            })
            .unwrap(),
        )
        .await
        .unwrap_err();
        assert_eq!(failed.code.as_str(), "E_TEST");
        assert_eq!(failed.message, "as asked");
    }

    #[tokio::test]
    async fn bad_input_is_classified() {
        let check = |kind: &'static str, params: Vec<u8>, code: ErrorCode| async move {
            let err = run(kind, &params).await.unwrap_err();
            assert_eq!(err.code, code, "{kind}: {err}");
        };
        check("nope", vec![], ErrorCode::UNKNOWN_KIND).await;
        check("sleep", vec![0xc1], ErrorCode::BAD_PAYLOAD).await;
        check(
            "sleep",
            msgpack::encode(&"ten").unwrap(),
            ErrorCode::BAD_PARAMS,
        )
        .await;
        check(
            "sleep",
            msgpack::encode(&SleepParams {
                ms: Sleep::MAX_MS + 1,
            })
            .unwrap(),
            ErrorCode::BAD_PARAMS,
        )
        .await;
    }

    /// The split machinery (`split`) end to end, through the table, with
    /// the `split_sum` test kind.
    #[test]
    fn a_whole_run_reports_each_of_its_steps() {
        let (reports, mut received) = tokio::sync::mpsc::unbounded_channel();
        let sink = crate::context::ProgressSink {
            reports,
            interval: Duration::ZERO,
        };
        let ctx = TaskContext::for_test();
        let progress = crate::context::Progress::new(
            sink,
            tandem_shared::Class::Parallel,
            ctx.id,
            "w 1-0".into(),
        );
        let stop = ctx.with_progress(Some(progress)).stop();
        let params = SplitSumParams {
            n: 8_000,
            block: 1_000,
            block_ms: 0,
            fail_block: None,
        };
        assert_eq!(SplitSum.cpu_steps(&params), 4);
        SplitSum.cpu(&params, &stop).unwrap();
        let mut seen = Vec::new();
        while let Ok(crate::context::ProgressItem::Report(report)) = received.try_recv() {
            seen.push((report.fraction, report.message));
        }
        assert_eq!(
            seen,
            [
                (0.25, "step 1 of 4".to_owned()),
                (0.5, "step 2 of 4".to_owned()),
                (0.75, "step 3 of 4".to_owned()),
                (1.0, "step 4 of 4".to_owned()),
            ]
        );
    }

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
