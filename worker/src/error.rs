//! Why a task did not produce a result: [`TaskError`], with the code users
//! see and the [`Retry`] policy the executor follows. It imports nothing
//! from the rest of the worker: every layer above returns it.

use tandem_shared::{ErrorCode, msgpack};

/// Whether a failed attempt is worth another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retry after the worker's exponential backoff with jitter, while
    /// attempts remain.
    Backoff,
    /// Retry after this delay, while attempts remain.
    After(std::time::Duration),
    /// Never retry: the same input fails the same way (bad parameters, a
    /// deliberate refusal). The task goes to the dead-letter stream.
    Never,
}

/// Why a task did not produce a result: a code users see, a message, and
/// whether to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TaskError {
    pub code: ErrorCode,
    pub message: String,
    pub retry: Retry,
}

impl TaskError {
    /// An error worth retrying with backoff (a transient condition).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry: Retry::Backoff,
        }
    }

    /// An error no retry can fix.
    pub fn fatal(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            retry: Retry::Never,
            ..Self::new(code, message)
        }
    }

    /// The device is unusable: a CUDA error that poisons the context
    /// (illegal address, launch failure). A GPU worker marks its device
    /// failed, hands every running task back and exits, for its fleet to
    /// restart it; the task is not charged an attempt.
    pub fn device_failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::DEVICE_FAILED, message)
    }

    /// The device ran out of memory: a GPU worker hands the task back for a
    /// device with more room (or the CPU worker) and goes on.
    pub fn out_of_memory(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::DEVICE_OUT_OF_MEMORY, message)
    }

    /// An error worth retrying after `delay` (say, a rate limit's reset).
    pub fn retry_after(
        code: ErrorCode,
        message: impl Into<String>,
        delay: std::time::Duration,
    ) -> Self {
        Self {
            retry: Retry::After(delay),
            ..Self::new(code, message)
        }
    }
}

/// A CUDA error, by what it means for the device.
impl From<tandem_kernels::driver::DeviceError> for TaskError {
    fn from(err: tandem_kernels::driver::DeviceError) -> Self {
        use tandem_kernels::driver::Fault;
        match err.fault {
            Fault::Sticky => TaskError::device_failed(err.message),
            Fault::OutOfMemory => TaskError::out_of_memory(err.message),
            Fault::Other => TaskError::new(ErrorCode::HANDLER_ERROR, err.message),
        }
    }
}

/// An MLP on the GPU failed: bad input fails for good, a device error by
/// what it means for the device.
impl From<tandem_kernels::mlp_gpu::GpuMlpError> for TaskError {
    fn from(err: tandem_kernels::mlp_gpu::GpuMlpError) -> Self {
        use tandem_kernels::mlp_gpu::GpuMlpError;
        match err {
            GpuMlpError::Device(err) => err.into(),
            GpuMlpError::Invalid(err) => TaskError::fatal(ErrorCode::BAD_PARAMS, err.to_string()),
            other => TaskError::fatal(ErrorCode::HANDLER_ERROR, other.to_string()),
        }
    }
}

/// A transformer on the GPU failed: bad input fails for good, a device
/// error by what it means for the device.
impl From<tandem_kernels::transformer_gpu::GpuTransformerError> for TaskError {
    fn from(err: tandem_kernels::transformer_gpu::GpuTransformerError) -> Self {
        use tandem_kernels::transformer_gpu::GpuTransformerError;
        match err {
            // The device's own message (a cuBLAS status, a kernel
            // launch) does not say which model kind ran: name it.
            GpuTransformerError::Device(err) => tandem_kernels::driver::DeviceError {
                message: format!("transformer on the GPU: {}", err.message),
                ..err
            }
            .into(),
            GpuTransformerError::Invalid(err) => {
                TaskError::fatal(ErrorCode::BAD_PARAMS, err.to_string())
            }
            other => TaskError::fatal(ErrorCode::HANDLER_ERROR, other.to_string()),
        }
    }
}

/// Bytes that are not one MessagePack value are a bad payload; MessagePack
/// of the wrong shape is bad parameters, named by field (`sigma: expected a
/// number, got a string ("0.2")`).
pub(crate) fn decode_error(err: &msgpack::CodecError) -> TaskError {
    let message = match err {
        msgpack::CodecError::NotMessagePack(_) => format!("params are {err}"),
        _ => err.to_string(),
    };
    TaskError::fatal(err.code(), message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_kernels::driver::{DeviceError, Fault};
    use tandem_kernels::transformer_gpu::GpuTransformerError;

    /// A transformer's device failure names the model kind and keeps what
    /// it means for the device: out of memory hands the task back, a
    /// sticky fault fails the device.
    #[test]
    fn a_transformer_device_error_names_the_arch_and_keeps_its_fault() {
        let cases = [
            (Fault::OutOfMemory, ErrorCode::DEVICE_OUT_OF_MEMORY),
            (Fault::Other, ErrorCode::HANDLER_ERROR),
        ];
        for (fault, code) in cases {
            let err = TaskError::from(GpuTransformerError::Device(DeviceError {
                fault,
                message: "cuBLAS: CUBLAS_STATUS_ALLOC_FAILED".into(),
            }));
            assert_eq!(err.code, code, "{fault:?}");
            assert_eq!(
                err.message,
                "transformer on the GPU: cuBLAS: CUBLAS_STATUS_ALLOC_FAILED"
            );
        }
        let sticky = TaskError::from(GpuTransformerError::Device(DeviceError {
            fault: Fault::Sticky,
            message: "an illegal address".into(),
        }));
        assert_eq!(
            sticky.code,
            TaskError::device_failed("x").code,
            "{}",
            sticky.message
        );
        assert!(sticky.message.starts_with("transformer on the GPU: "));
        let wrong = TaskError::from(GpuTransformerError::WrongGpu(1));
        assert!(wrong.message.contains("transformer"), "{}", wrong.message);
    }
}
