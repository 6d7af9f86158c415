//! The worker's model cache: registered models (`tandem model`) loaded on
//! first use, checked (SHA-256, format), and kept resident between tasks:
//! on a real GPU as a [`GpuMlp`] in device memory, on a simulated GPU as
//! host memory booked in the device's memory ledger as if it were on the
//! device, on a CPU worker in host memory. A model whose registry version
//! changed is loaded again. Room on a device is made by the ledger's
//! eviction rule (only `high` and `critical` tasks evict, lower priorities
//! first, least recently used first); a model that cannot be made to fit
//! fails the attempt as "out of device memory", which hands the task back
//! for a device with more room or the CPU worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tandem_kernels::mlp::{Activation as MlpActivation, Layer as MlpLayer, Mlp};
use tandem_kernels::mlp_gpu::{GpuMlp, GpuMlpError};
use tandem_shared::model_format::{Activation, Layer, Model};
use tandem_shared::store::Store;
use tandem_shared::{ErrorCode, Priority};

use crate::device::Device;
use crate::device::gpu_paths::MODEL_PATHS;
use crate::error::TaskError;
use crate::running::Running;

/// A model is not registered.
pub const MODEL_NOT_FOUND: ErrorCode = ErrorCode::from_static("MODEL_NOT_FOUND");
/// A registered model's file fails its checks.
pub const MODEL_INVALID: ErrorCode = ErrorCode::from_static("MODEL_INVALID");
/// Models a CPU worker keeps in memory at once.
const CPU_RESIDENT: usize = 8;

/// A model ready to run.
#[derive(Debug)]
pub struct Loaded {
    pub name: String,
    pub version: u64,
    pub mlp: Arc<Mlp>,
    /// The model on the worker's real GPU; `None` on CPU workers, simulated
    /// GPUs, or when cuBLAS is missing (the CPU twin runs then).
    pub gpu: Option<Arc<GpuMlp>>,
}

#[derive(Debug)]
pub struct ModelCache {
    store: Store,
    device: Arc<Device>,
    running: Running,
    /// Where `train` writes models it is asked to (`model_dir`).
    model_dir: String,
    resident: Mutex<HashMap<String, Arc<Loaded>>>,
    /// Order of use on a CPU worker (most recent last), which has no ledger.
    recent: Mutex<Vec<String>>,
}

impl ModelCache {
    pub(crate) fn new(
        store: Store,
        device: Arc<Device>,
        running: Running,
        model_dir: String,
    ) -> Self {
        Self {
            store,
            device,
            running,
            model_dir,
            resident: Mutex::new(HashMap::new()),
            recent: Mutex::new(Vec::new()),
        }
    }

    /// The directory `train` may write models to; empty: none.
    pub fn model_dir(&self) -> &str {
        &self.model_dir
    }

    fn resident(&self) -> MutexGuard<'_, HashMap<String, Arc<Loaded>>> {
        self.resident.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The model `name` for a task of `priority`, and whether it was
    /// resident already (a cache hit).
    pub async fn get(
        &self,
        name: &str,
        priority: Priority,
    ) -> Result<(Arc<Loaded>, bool), TaskError> {
        let info = self
            .store
            .model_info(name)
            .await
            .map_err(|e| TaskError::new(ErrorCode::HANDLER_ERROR, format!("model registry: {e}")))?
            .ok_or_else(|| {
                TaskError::fatal(
                    MODEL_NOT_FOUND,
                    format!("no model is registered as {name:?}"),
                )
            })?;
        let cached = self.resident().get(name).cloned();
        match cached {
            Some(loaded) if loaded.version == info.version => {
                self.used(name, priority);
                return Ok((loaded, true));
            }
            // A stale version gives its room back first, so the use below
            // counts as the miss it is.
            Some(_) => self.forget(name),
            None => {}
        }
        self.used(name, priority);
        let (info, file) = self
            .store
            .load_model_file(name)
            .await
            .map_err(|e| TaskError::fatal(MODEL_INVALID, e.to_string()))?
            .ok_or_else(|| {
                TaskError::fatal(MODEL_NOT_FOUND, format!("model {name:?} was removed"))
            })?;
        let model = Model::decode(&file)
            .map_err(|e| TaskError::fatal(MODEL_INVALID, format!("model {name:?}: {e}")))?;
        let mlp = Arc::new(to_mlp(model));
        let loaded = self.place(name, info.version, mlp, priority).await?;
        Ok((loaded, false))
    }

    /// Counts a use (the ledger's hit or miss counter on a GPU worker).
    fn used(&self, name: &str, priority: Priority) {
        if self.device.is_gpu() {
            self.device.ledger.touch(name, priority);
        }
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.retain(|n| n != name);
        recent.push(name.to_owned());
    }

    /// Makes the model resident: books its room on a GPU worker (evicting
    /// what the rule allows), uploads it to a real GPU.
    async fn place(
        &self,
        name: &str,
        version: u64,
        mlp: Arc<Mlp>,
        priority: Priority,
    ) -> Result<Arc<Loaded>, TaskError> {
        let mut gpu = None;
        if self.device.is_gpu() {
            let bytes = mlp
                .parameter_bytes()
                .saturating_mul(self.device.model_scale());
            let evicted = self
                .device
                .ledger
                .make_room(bytes, priority, self.running.reserved())
                .map_err(|no_room| {
                    TaskError::out_of_memory(format!("model {name:?} ({bytes} bytes): {no_room}"))
                })?;
            for victim in &evicted {
                tracing::info!(model = %victim, evicted_for = %name, %priority, "model evicted");
                self.resident().remove(victim);
            }
            if let Some(message) = self.device.before_upload() {
                let sticky = GpuMlpError::Device(tandem_kernels::driver::DeviceError {
                    fault: tandem_kernels::driver::Fault::Sticky,
                    message,
                });
                if let UploadFailure::Fail(err) = upload_failure(name, sticky) {
                    return Err(err);
                }
            }
            // Without the MLP kernels or cuBLAS the model stays on the CPU;
            // the worker said so once at start (`device::gpu_paths`), not
            // here for every model.
            if let Some(runtime) = self.device.runtime()
                && self.device.has_gpu_paths(MODEL_PATHS)
            {
                let upload = Arc::clone(&mlp);
                let uploaded =
                    tokio::task::spawn_blocking(move || GpuMlp::upload(&runtime, &upload))
                        .await
                        .map_err(|e| TaskError::new(ErrorCode::HANDLER_PANIC, e.to_string()))?;
                match uploaded {
                    Ok(resident) => gpu = Some(Arc::new(resident)),
                    Err(err) => match upload_failure(name, err) {
                        UploadFailure::Fail(err) => return Err(err),
                        UploadFailure::RunOnCpu(why) => {
                            tracing::warn!(model = %name, "model runs on the CPU: {why}");
                        }
                    },
                }
            }
            self.device.ledger.admit(name, bytes, priority);
        } else {
            self.trim_cpu();
        }
        let loaded = Arc::new(Loaded {
            name: name.to_owned(),
            version,
            mlp,
            gpu,
        });
        self.resident().insert(name.to_owned(), Arc::clone(&loaded));
        tracing::info!(model = %name, version, device = %self.device.id(), "model loaded");
        Ok(loaded)
    }

    fn forget(&self, name: &str) {
        if self.resident().remove(name).is_some() {
            self.device.ledger.evict(name);
        }
    }

    /// Keeps a CPU worker's cache to [`CPU_RESIDENT`] models.
    fn trim_cpu(&self) {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let mut resident = self.resident();
        while resident.len() >= CPU_RESIDENT {
            let Some(oldest) = recent.iter().find(|n| resident.contains_key(*n)) else {
                break;
            };
            let oldest = oldest.clone();
            resident.remove(&oldest);
        }
    }
}

/// What a failed upload to a real GPU does to the attempt.
#[derive(Debug, PartialEq, Eq)]
enum UploadFailure {
    /// The attempt fails with this error: `DEVICE_FAILED` (the device is
    /// dead: the executor marks it failed, hands every running task back
    /// and the worker exits for its fleet to restart it) or out of memory
    /// (the task goes back for a device with more room).
    Fail(TaskError),
    /// The device is fine but the GPU path cannot run this model (no
    /// cuBLAS, a width beyond cuBLAS's, a kernel that did not load): its
    /// CPU twin runs it, for this reason.
    RunOnCpu(String),
}

/// Decides what a failed [`GpuMlp::upload`] of model `name` means. A
/// sticky fault (a poisoned context, a GPU gone) must not leave the worker
/// serving tasks on a dead device with its models on the CPU (issue 19).
fn upload_failure(name: &str, err: GpuMlpError) -> UploadFailure {
    use tandem_kernels::driver::Fault;
    match err {
        GpuMlpError::Device(err) => match err.fault {
            Fault::Sticky => UploadFailure::Fail(TaskError::device_failed(format!(
                "uploading model {name:?}: {}",
                err.message
            ))),
            Fault::OutOfMemory => UploadFailure::Fail(TaskError::out_of_memory(format!(
                "uploading model {name:?}: {}",
                err.message
            ))),
            Fault::Other => UploadFailure::RunOnCpu(err.message),
        },
        other => UploadFailure::RunOnCpu(other.to_string()),
    }
}

/// The wire's model as the kernels crate sees it (the same fields).
pub fn to_mlp(model: Model) -> Mlp {
    Mlp {
        layers: model
            .layers
            .into_iter()
            .map(|l| MlpLayer {
                inputs: l.inputs,
                outputs: l.outputs,
                weight: l.weight,
                bias: l.bias,
            })
            .collect(),
        activation: match model.activation {
            Activation::Relu => MlpActivation::Relu,
            Activation::Tanh => MlpActivation::Tanh,
        },
        input_mean: model.input_mean,
        input_std: model.input_std,
    }
}

/// The kernels' model back in the wire's form (to save a trained one).
pub fn from_mlp(mlp: Mlp) -> Model {
    Model {
        layers: mlp
            .layers
            .into_iter()
            .map(|l| Layer {
                inputs: l.inputs,
                outputs: l.outputs,
                weight: l.weight,
                bias: l.bias,
            })
            .collect(),
        activation: match mlp.activation {
            MlpActivation::Relu => Activation::Relu,
            MlpActivation::Tanh => Activation::Tanh,
        },
        input_mean: mlp.input_mean,
        input_std: mlp.input_std,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_upload_fails_the_device_only_when_the_device_is_dead() {
        use tandem_kernels::driver::{DeviceError, Fault};
        let device = |fault: Fault| {
            GpuMlpError::Device(DeviceError {
                fault,
                message: "the driver's words".into(),
            })
        };
        let check = |err: GpuMlpError, expect: Result<ErrorCode, ()>| {
            let got = match upload_failure("m", err) {
                UploadFailure::Fail(err) => {
                    assert!(err.message.contains("uploading model \"m\""), "{err}");
                    assert!(err.message.contains("the driver's words"), "{err}");
                    Ok(err.code)
                }
                UploadFailure::RunOnCpu(_) => Err(()),
            };
            assert_eq!(got, expect);
        };
        // Issue 19: a sticky error during an upload marks the device failed,
        // as DEVICE_FAILED from a task does; it no longer runs on the CPU.
        check(device(Fault::Sticky), Ok(ErrorCode::DEVICE_FAILED));
        check(
            device(Fault::OutOfMemory),
            Ok(ErrorCode::DEVICE_OUT_OF_MEMORY),
        );
        check(device(Fault::Other), Err(()));
        check(GpuMlpError::TooLarge("wide".into()), Err(()));
        check(GpuMlpError::WrongGpu(1), Err(()));
    }

    #[test]
    fn models_convert_both_ways_unchanged() {
        let model = Model::random(&[4, 8, 2], Activation::Tanh, 7).unwrap();
        let back = from_mlp(to_mlp(model.clone()));
        assert_eq!(back, model);
        assert_eq!(
            to_mlp(model.clone()).parameter_bytes(),
            model.parameter_bytes()
        );
    }
}
