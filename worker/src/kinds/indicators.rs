//! The `indicators` kind on a worker: technical indicators over batches of
//! closes (`tandem_kernels::indicators`), one series per CPU task or one
//! GPU thread per (indicator, series).

use tandem_kernels::indicators::{self as kernel, Indicator};
use tandem_kernels::runtime::Gpu;
use tandem_shared::kind::indicators::{
    IndicatorSpec, Indicators, IndicatorsOutput, IndicatorsParams, SeriesValues,
};

use crate::compute::Compute;
use crate::context::Stop;
use crate::error::TaskError;
use crate::kind_table::KindTable;

pub(crate) fn register(kinds: &mut KindTable) {
    kinds.register_compute(IndicatorsKind);
}

struct IndicatorsKind;

fn to_kernel(spec: &IndicatorSpec) -> Indicator {
    let p = |v: u32| v as usize;
    match *spec {
        IndicatorSpec::Sma { period } => Indicator::Sma { period: p(period) },
        IndicatorSpec::Ema { period } => Indicator::Ema { period: p(period) },
        IndicatorSpec::Rsi { period } => Indicator::Rsi { period: p(period) },
        IndicatorSpec::Macd { fast, slow, signal } => Indicator::Macd {
            fast: p(fast),
            slow: p(slow),
            signal: p(signal),
        },
        IndicatorSpec::Bollinger { period, k } => Indicator::Bollinger {
            period: p(period),
            k,
        },
    }
}

fn run(
    params: &IndicatorsParams,
    compute: impl FnOnce(&[&[f64]], &[Indicator]) -> Result<Vec<kernel::SeriesLines>, TaskError>,
) -> Result<IndicatorsOutput, TaskError> {
    let indicators: Vec<Indicator> = params.indicators.iter().map(to_kernel).collect();
    let series: Vec<&[f64]> = params.series.iter().map(|s| s.closes.as_slice()).collect();
    let values = compute(&series, &indicators)?;
    Ok(IndicatorsOutput {
        lines: params
            .indicators
            .iter()
            .flat_map(IndicatorSpec::line_names)
            .collect(),
        series: params
            .series
            .iter()
            .zip(values)
            .map(|(s, values)| SeriesValues {
                symbol: s.symbol.clone(),
                values,
            })
            .collect(),
    })
}

impl Compute for IndicatorsKind {
    type Spec = Indicators;
    const MODULE: Option<&'static str> = Some(kernel::SOURCE.module);

    fn cpu(&self, params: &IndicatorsParams, _stop: &Stop) -> Result<IndicatorsOutput, TaskError> {
        run(params, |series, indicators| {
            Ok(kernel::indicators_cpu(series, indicators))
        })
    }

    fn gpu(
        &self,
        gpu: &Gpu,
        params: &IndicatorsParams,
        _stop: &Stop,
    ) -> Result<IndicatorsOutput, TaskError> {
        run(params, |series, indicators| {
            Ok(kernel::indicators_gpu(gpu, series, indicators)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::kind::indicators::Series;
    use tandem_shared::{ErrorCode, msgpack};

    use super::*;
    use crate::context::TaskContext;

    fn ctx() -> TaskContext {
        TaskContext::for_test()
    }

    #[tokio::test]
    async fn runs_through_the_registry() {
        let mut kinds = KindTable::new();
        register(&mut kinds);
        let params = IndicatorsParams {
            series: vec![
                Series {
                    symbol: "AAA".into(),
                    closes: vec![2.0, 4.0, 6.0, 8.0, 12.0, 10.0],
                },
                Series {
                    symbol: "EMPTY".into(),
                    closes: vec![],
                },
            ],
            indicators: vec![
                IndicatorSpec::Sma { period: 3 },
                IndicatorSpec::Bollinger { period: 3, k: 2.0 },
            ],
        };
        let bytes = msgpack::encode(&params).unwrap();
        let result = kinds
            .prepare("indicators", &bytes, ctx())
            .map_err(|e| e.message)
            .unwrap()
            .await
            .map_err(|e| e.message)
            .unwrap();
        let out: IndicatorsOutput = msgpack::decode(&result).unwrap();
        assert_eq!(
            out.lines,
            [
                "sma(3)",
                "bollinger(3,2).middle",
                "bollinger(3,2).upper",
                "bollinger(3,2).lower"
            ]
        );
        assert_eq!(out.series[0].symbol, "AAA");
        let sma = &out.series[0].values[0];
        assert!(sma[0].is_nan() && sma[1].is_nan());
        assert_eq!(&sma[2..], &[4.0, 6.0, 26.0 / 3.0, 10.0]);
        assert_eq!(out.series[0].values[1][2..], sma[2..]);
        assert_eq!(out.series[1].values, vec![Vec::<f64>::new(); 4]);

        let mut bad = params.clone();
        bad.series[0].closes[4] = f64::NAN;
        let err = kinds
            .prepare("indicators", &msgpack::encode(&bad).unwrap(), ctx())
            .err()
            .expect("rejected");
        assert_eq!(err.code, ErrorCode::BAD_PARAMS);
        assert!(err.message.contains("closes[4]"), "{}", err.message);
    }
}
