//! The `patterns` kind on a worker: candlestick patterns over batches of
//! OHLC bars (`tandem_kernels::patterns`), a bitmask per bar.

use tandem_kernels::patterns::{self as kernel, Ohlc};
use tandem_kernels::runtime::Gpu;
use tandem_shared::kind::patterns::{
    PATTERN_NAMES, Patterns, PatternsOutput, PatternsParams, SeriesMasks,
};

use crate::compute::Compute;
use crate::context::Stop;
use crate::error::TaskError;
use crate::kind_table::KindTable;

pub(crate) fn register(kinds: &mut KindTable) {
    kinds.register_compute(PatternsKind);
}

struct PatternsKind;

fn run(
    params: &PatternsParams,
    compute: impl FnOnce(&[Ohlc<'_>], &kernel::Thresholds) -> Result<Vec<Vec<u32>>, TaskError>,
) -> Result<PatternsOutput, TaskError> {
    let th = &params.thresholds;
    let thresholds = kernel::Thresholds {
        doji_body: th.doji_body,
        shadow_ratio: th.shadow_ratio,
        small_shadow: th.small_shadow,
        long_body: th.long_body,
        star_body: th.star_body,
    };
    let series: Vec<Ohlc<'_>> = params
        .series
        .iter()
        .map(|s| Ohlc {
            open: &s.open,
            high: &s.high,
            low: &s.low,
            close: &s.close,
        })
        .collect();
    let masks = compute(&series, &thresholds)?;
    Ok(PatternsOutput {
        patterns: PATTERN_NAMES.iter().map(|n| (*n).to_owned()).collect(),
        series: params
            .series
            .iter()
            .zip(masks)
            .map(|(s, masks)| SeriesMasks {
                symbol: s.symbol.clone(),
                masks,
            })
            .collect(),
    })
}

impl Compute for PatternsKind {
    type Spec = Patterns;
    const MODULE: Option<&'static str> = Some(kernel::SOURCE.module);

    fn cpu(&self, params: &PatternsParams, _stop: &Stop) -> Result<PatternsOutput, TaskError> {
        run(params, |series, th| Ok(kernel::patterns_cpu(series, th)))
    }

    fn gpu(
        &self,
        gpu: &Gpu,
        params: &PatternsParams,
        _stop: &Stop,
    ) -> Result<PatternsOutput, TaskError> {
        run(params, |series, th| {
            Ok(kernel::patterns_gpu(gpu, series, th)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::kind::patterns::{OhlcSeries, Thresholds};
    use tandem_shared::{ErrorCode, msgpack};

    use super::*;
    use crate::context::TaskContext;

    fn ctx() -> TaskContext {
        TaskContext::for_test()
    }

    #[tokio::test]
    async fn runs_through_the_registry() {
        assert_eq!(PATTERN_NAMES, kernel::NAMES);
        let mut kinds = KindTable::new();
        register(&mut kinds);
        // A bearish bar, then a bullish one engulfing it; a doji.
        let params = PatternsParams {
            series: vec![OhlcSeries {
                symbol: "AAA".into(),
                open: vec![11.0, 9.9, 10.0],
                high: vec![11.2, 11.5, 11.0],
                low: vec![9.8, 9.7, 9.0],
                close: vec![10.0, 11.4, 10.1],
            }],
            thresholds: Thresholds::default(),
        };
        let bytes = msgpack::encode(&params).unwrap();
        let result = kinds
            .prepare("patterns", &bytes, ctx())
            .map_err(|e| e.message)
            .unwrap()
            .await
            .map_err(|e| e.message)
            .unwrap();
        let out: PatternsOutput = msgpack::decode(&result).unwrap();
        assert_eq!(out.patterns[3], "bullish_engulfing");
        assert_eq!(out.series[0].symbol, "AAA");
        assert_eq!(
            out.series[0].masks,
            vec![0, kernel::BULLISH_ENGULFING, kernel::DOJI]
        );

        let mut bad = params.clone();
        bad.series[0].high[2] = 10.05;
        let err = kinds
            .prepare("patterns", &msgpack::encode(&bad).unwrap(), ctx())
            .err()
            .expect("rejected");
        assert_eq!(err.code, ErrorCode::BAD_PARAMS);
        assert!(err.message.contains("bar 2"), "{}", err.message);
    }
}
