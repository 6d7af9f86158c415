//! The glue kinds `features` and `book` on a worker: CPU only (no
//! kernels), each a call into its contract's computation
//! (`tandem_shared::kind::features`), which the contract's checks share.

use tandem_shared::kind::features::{
    Book, BookOutput, BookParams, Features, FeaturesOutput, FeaturesParams,
};

use tandem_shared::ErrorCode;
use tandem_shared::kind::BadParams;

use crate::compute::Compute;
use crate::context::Stop;
use crate::error::TaskError;
use crate::kind_table::KindTable;

pub(crate) fn register(kinds: &mut KindTable) {
    kinds.register_compute(FeaturesKind);
    kinds.register_compute(BookKind);
}

/// A parameter the contract's checks passed but the computation refused
/// (they share the code, so only a value out of an f32's range gets here).
fn bad(err: BadParams) -> TaskError {
    TaskError::fatal(ErrorCode::BAD_PARAMS, err.0)
}

struct FeaturesKind;

impl Compute for FeaturesKind {
    type Spec = Features;
    const MODULE: Option<&'static str> = None;

    fn cpu(&self, params: &FeaturesParams, _stop: &Stop) -> Result<FeaturesOutput, TaskError> {
        Features::join(params).map_err(bad)
    }
}

struct BookKind;

impl Compute for BookKind {
    type Spec = Book;
    const MODULE: Option<&'static str> = None;

    fn cpu(&self, params: &BookParams, _stop: &Stop) -> Result<BookOutput, TaskError> {
        Book::build(params).map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::kind::indicators::{IndicatorsOutput, SeriesValues};
    use tandem_shared::kind::model_kinds::Prediction;
    use tandem_shared::msgpack;

    use super::*;
    use crate::context::TaskContext;

    async fn run(kinds: &KindTable, kind: &str, params: &impl serde::Serialize) -> Vec<u8> {
        kinds
            .prepare(
                kind,
                &msgpack::encode(params).unwrap(),
                TaskContext::for_test(),
            )
            .map_err(|e| e.message)
            .unwrap()
            .await
            .map_err(|e| e.message)
            .unwrap()
    }

    #[tokio::test]
    async fn both_run_through_the_registry() {
        let mut kinds = KindTable::new();
        register(&mut kinds);
        let params = FeaturesParams {
            indicators: IndicatorsOutput {
                lines: vec!["rsi(1)".into()],
                series: vec![SeriesValues {
                    symbol: "AAA".into(),
                    values: vec![vec![f64::NAN, 40.0]],
                }],
            },
            patterns: None,
            window: 1,
            standardize: false,
        };
        let result = run(&kinds, "features", &params).await;
        let out: FeaturesOutput = msgpack::decode(&result).unwrap();
        assert_eq!(out.symbols[0].features, [40.0]);

        let mut bad = params.clone();
        bad.window = 2;
        let err = kinds
            .prepare(
                "features",
                &msgpack::encode(&bad).unwrap(),
                TaskContext::for_test(),
            )
            .err()
            .expect("rejected");
        assert_eq!(err.code, ErrorCode::BAD_PARAMS);
        assert!(err.message.contains("warm-up"), "{}", err.message);

        let book = BookParams {
            predictions: vec![Prediction {
                symbol: "AAA".into(),
                values: vec![1.0],
            }],
            series: vec![tandem_shared::kind::indicators::Series {
                symbol: "AAA".into(),
                closes: vec![1.0, 2.0, 3.0],
            }],
            top: None,
            output: 0,
            mu_scale: 0.001,
        };
        let result = run(&kinds, "book", &book).await;
        let out: BookOutput = msgpack::decode(&result).unwrap();
        assert_eq!(out.symbols, ["AAA"]);
        assert_eq!(out.covariance.len(), 1);
    }
}
