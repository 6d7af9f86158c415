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
            if let Some(runtime) = self.device.runtime() {
                let upload = Arc::clone(&mlp);
                let uploaded =
                    tokio::task::spawn_blocking(move || GpuMlp::upload(&runtime, &upload))
                        .await
                        .map_err(|e| TaskError::new(ErrorCode::HANDLER_PANIC, e.to_string()))?;
                match uploaded {
                    Ok(resident) => gpu = Some(Arc::new(resident)),
                    Err(GpuMlpError::Device(err))
                        if err.fault == tandem_kernels::driver::Fault::OutOfMemory =>
                    {
                        return Err(TaskError::out_of_memory(format!(
                            "uploading model {name:?}: {}",
                            err.message
                        )));
                    }
                    Err(err) => tracing::warn!(model = %name, "model runs on the CPU: {err}"),
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
