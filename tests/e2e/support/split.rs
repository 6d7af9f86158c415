//! Split tasks' helpers, for the tests of split tasks and of the views
//! that show them: the `split_sum` kind's exact sum, and a task's record.

use tandem_shared::TaskId;
use tandem_shared::kind::builtin::SplitSumParams;
use tandem_shared::wire::TaskRecord;

use super::RedisServer;
use super::gpus::store;

/// The sum as the kind defines it: block sums added in block order.
pub fn expected(p: &SplitSumParams) -> f64 {
    (0..p.blocks())
        .map(|b| {
            (b * p.block..((b + 1) * p.block).min(p.n))
                .map(|i| 1.0 / (i as f64 + 1.0))
                .sum::<f64>()
        })
        .sum()
}

pub async fn record(redis: &RedisServer, id: &TaskId) -> TaskRecord {
    store(redis)
        .await
        .find_record(id)
        .await
        .unwrap()
        .expect("record")
}
