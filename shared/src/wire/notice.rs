//! The completion: what a worker's commit writes into the task record
//! ([`Finish`]), and the completion notice that the complete script then
//! sends to the producer's reply stream, repeating the record. A notice
//! is read as a [`TaskRecord`] ([`TaskRecord::from_fields`]); a large
//! result stays in the record only and the notice says so.

use super::field;
use super::record::{TaskFailure, TaskRecord};
use crate::task::Status;

/// What a worker writes into a task record when it finishes with a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub status: Status,
    pub worker: String,
    pub device: String,
    pub run_us: Option<u64>,
    pub outcome: FinishOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FinishOutcome {
    /// MessagePack result.
    Result(Vec<u8>),
    Error(TaskFailure),
}

impl Finish {
    /// The record pairs the complete script writes, besides `status` and
    /// `finished_at_ms`, which it sets itself.
    pub fn record_pairs(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut pairs = vec![
            (field::WORKER, self.worker.clone().into_bytes()),
            (field::DEVICE, self.device.clone().into_bytes()),
        ];
        if let Some(run_us) = self.run_us {
            pairs.push((field::RUN_US, run_us.to_string().into_bytes()));
        }
        match &self.outcome {
            FinishOutcome::Result(bytes) => {
                pairs.push((field::RESULT_BYTES, bytes.len().to_string().into_bytes()));
                pairs.push((field::RESULT, bytes.clone()));
            }
            FinishOutcome::Error(failure) => {
                pairs.push((field::ERROR_CODE, failure.code.to_string().into_bytes()));
                pairs.push((field::ERROR_MESSAGE, failure.message.clone().into_bytes()));
            }
        }
        pairs
    }
}

impl TaskRecord {
    /// True when a notice left the result out because it was large.
    pub fn result_left_out(&self) -> bool {
        self.result.is_none() && self.result_bytes.is_some_and(|n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_pairs_carry_result_or_error() {
        let ok = Finish {
            status: Status::Succeeded,
            worker: "w".into(),
            device: "cpu".into(),
            run_us: Some(12),
            outcome: FinishOutcome::Result(vec![1, 2, 3]),
        };
        let names: Vec<_> = ok.record_pairs().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                field::WORKER,
                field::DEVICE,
                field::RUN_US,
                field::RESULT_BYTES,
                field::RESULT
            ]
        );
        let record = TaskRecord::from_fields(
            ok.record_pairs()
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_slice())),
        );
        assert_eq!(record.result.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(record.result_bytes, Some(3));
        assert!(!record.result_left_out());
    }

    #[test]
    fn a_notice_without_its_large_result_says_so() {
        let record = TaskRecord::from_fields([(field::RESULT_BYTES.as_bytes(), &b"70000"[..])]);
        assert!(record.result_left_out());
    }
}
