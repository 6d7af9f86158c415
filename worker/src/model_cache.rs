//! The worker's model cache: registered models (`tandem model`), MLPs and
//! transformers, loaded on first use, checked (SHA-256, format), and kept
//! resident between tasks: an MLP on a real GPU as a [`GpuMlp`] in device
//! memory, on a simulated GPU as host memory booked in the device's memory
//! ledger as if it were on the device, on a CPU worker in host memory. A
//! transformer likewise: on a real GPU as a [`GpuTransformer`] (its forward
//! pass; `train` fine-tunes a copy of it there, forward and backward), booked
//! in the ledger, on a simulated GPU booked as if it were there, elsewhere
//! in host memory ([`ResidentTransformer`]). A model whose registry version
//! changed is loaded again. Room on a device is made by the ledger's
//! eviction rule (only `high` and `critical` tasks evict, lower priorities
//! first, least recently used first); a model that cannot be made to fit
//! fails the attempt as "out of device memory", which hands the task back
//! for a device with more room or the CPU worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tandem_kernels::mlp::{Activation as MlpActivation, Layer as MlpLayer, Mlp};
use tandem_kernels::mlp_gpu::{GpuMlp, GpuMlpError};
use tandem_kernels::transformer::{self as xf, Transformer};
use tandem_kernels::transformer_gpu::{GpuTransformer, GpuTransformerError};
use tandem_shared::model_format::transformer::{self as xf_format, TransformerModel};
use tandem_shared::model_format::{Activation, Layer, Model};
use tandem_shared::store::Store;
use tandem_shared::{ErrorCode, Priority};

use crate::device::Device;
use crate::device::gpu_paths::{MODEL_PATHS, TRANSFORMER_PATHS};
use crate::error::TaskError;
use crate::running::Running;
use tandem_shared::TaskId;

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
    pub weights: Weights,
}

/// A resident model of either architecture.
#[derive(Debug)]
pub enum Weights {
    Mlp {
        mlp: Arc<Mlp>,
        /// The model on the worker's real GPU; `None` on CPU workers,
        /// simulated GPUs, or when cuBLAS is missing (the CPU twin runs
        /// then).
        gpu: Option<Arc<GpuMlp>>,
    },
    Transformer(ResidentTransformer),
}

/// Where a transformer is resident.
#[derive(Debug)]
pub enum ResidentTransformer {
    /// In host memory; the CPU twin runs it (CPU workers, simulated GPUs,
    /// and a real GPU whose transformer kernels or cuBLAS are off, or whose
    /// upload failed without harm to the device).
    Cpu(Arc<Transformer>),
    /// On the worker's real GPU: its forward pass runs there (cuBLAS and
    /// `cuda/transformer.cu`); `train` uploads its own copy of the host
    /// weights and trains it there (forward, backward and Adam on the GPU).
    Gpu {
        host: Arc<Transformer>,
        device: Arc<GpuTransformer>,
    },
}

impl ResidentTransformer {
    /// The weights in host memory.
    pub fn host(&self) -> &Arc<Transformer> {
        match self {
            ResidentTransformer::Cpu(model) | ResidentTransformer::Gpu { host: model, .. } => model,
        }
    }
}

impl Weights {
    /// Floats in one input row (an MLP's input width, a transformer's
    /// `window x features`).
    pub fn input_width(&self) -> usize {
        match self {
            Weights::Mlp { mlp, .. } => mlp.inputs(),
            Weights::Transformer(t) => t.host().config.window_floats(),
        }
    }

    /// Outputs per row.
    pub fn output_width(&self) -> usize {
        match self {
            Weights::Mlp { mlp, .. } => mlp.outputs(),
            Weights::Transformer(t) => t.host().config.outputs,
        }
    }

    /// What the parameters occupy (f32).
    pub fn parameter_bytes(&self) -> u64 {
        match self {
            Weights::Mlp { mlp, .. } => mlp.parameter_bytes(),
            Weights::Transformer(t) => t.host().config.parameter_bytes(),
        }
    }
}

/// A decoded model file, before it is placed.
enum Decoded {
    Mlp(Arc<Mlp>),
    Transformer(Arc<Transformer>),
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
        let invalid = |e: String| TaskError::fatal(MODEL_INVALID, format!("model {name:?}: {e}"));
        let decoded = if xf_format::is_transformer(&file) {
            let model = TransformerModel::decode(&file).map_err(|e| invalid(e.to_string()))?;
            let model = to_transformer(model);
            model.check().map_err(|e| invalid(e.to_string()))?;
            Decoded::Transformer(Arc::new(model))
        } else {
            let model = Model::decode(&file).map_err(|e| invalid(e.to_string()))?;
            Decoded::Mlp(Arc::new(to_mlp(model)))
        };
        let loaded = self.place(name, info.version, decoded, priority).await?;
        Ok((loaded, false))
    }

    /// Memory task `task` may use for activations on this device: what it
    /// declared (its reservation, which the producer sized for them) plus
    /// the ledger's free memory (`Device::free_memory`, the other tasks'
    /// reservations and the models set aside); `None` on a CPU worker (host
    /// memory, no ledger). A transformer's batch is cut to fit it
    /// ([`windows_per_pass`]). Without its own reservation counted, a task
    /// whose declaration filled the device would run in passes of one
    /// window while the memory booked for it lay unused.
    pub fn activation_room(&self, task: &TaskId) -> Option<u64> {
        let others = self
            .running
            .reserved()
            .saturating_sub(self.running.memory_of(task));
        self.device.free_memory(others)
    }

    /// Makes room for `bytes` of model `name` in the device's ledger,
    /// evicting what the rule allows (and forgetting the evicted models);
    /// out of device memory when it cannot.
    fn make_room(&self, name: &str, bytes: u64, priority: Priority) -> Result<(), TaskError> {
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
        Ok(())
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
        decoded: Decoded,
        priority: Priority,
    ) -> Result<Arc<Loaded>, TaskError> {
        let mlp = match decoded {
            Decoded::Mlp(mlp) => mlp,
            Decoded::Transformer(model) => {
                return self.place_transformer(name, version, model, priority).await;
            }
        };
        let mut gpu = None;
        if self.device.is_gpu() {
            let bytes = mlp
                .parameter_bytes()
                .saturating_mul(self.device.model_scale());
            self.make_room(name, bytes, priority)?;
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
        Ok(self.keep(name, version, Weights::Mlp { mlp, gpu }))
    }

    /// Makes a transformer resident. A real GPU with the transformer
    /// kernels and cuBLAS books its parameters (and position table) in the
    /// ledger, evicting what the rule allows, and uploads it; its forward
    /// passes' activations are booked per batch by the model kinds
    /// ([`ModelCache::activation_room`]). A simulated GPU books it as it
    /// books an MLP. A real GPU without those paths, or whose upload failed
    /// without harm to the device, runs the CPU twin and books nothing.
    async fn place_transformer(
        &self,
        name: &str,
        version: u64,
        model: Arc<Transformer>,
        priority: Priority,
    ) -> Result<Arc<Loaded>, TaskError> {
        if let Some(runtime) = self.device.runtime()
            && self.device.has_gpu_paths(TRANSFORMER_PATHS)
        {
            let bytes = GpuTransformer::forward_bytes(&model.config, 0);
            self.make_room(name, bytes, priority)?;
            if let Some(message) = self.device.before_upload() {
                return Err(TaskError::device_failed(format!(
                    "uploading model {name:?}: {message}"
                )));
            }
            let upload = Arc::clone(&model);
            let uploaded =
                tokio::task::spawn_blocking(move || GpuTransformer::upload(&runtime, &upload))
                    .await
                    .map_err(|e| TaskError::new(ErrorCode::HANDLER_PANIC, e.to_string()))?;
            match uploaded {
                Ok(device) => {
                    self.device.ledger.admit(name, bytes, priority);
                    let resident = ResidentTransformer::Gpu {
                        host: model,
                        device: Arc::new(device),
                    };
                    return Ok(self.keep(name, version, Weights::Transformer(resident)));
                }
                Err(err) => match transformer_upload_failure(name, err) {
                    UploadFailure::Fail(err) => return Err(err),
                    UploadFailure::RunOnCpu(why) => {
                        tracing::warn!(model = %name, "transformer runs on the CPU: {why}");
                    }
                },
            }
            return Ok(self.keep(
                name,
                version,
                Weights::Transformer(ResidentTransformer::Cpu(model)),
            ));
        }
        if self.device.is_gpu() && self.device.runtime().is_none() {
            let bytes = model
                .config
                .parameter_bytes()
                .saturating_mul(self.device.model_scale());
            self.make_room(name, bytes, priority)?;
            self.device.ledger.admit(name, bytes, priority);
        } else if !self.device.is_gpu() {
            self.trim_cpu();
        }
        Ok(self.keep(
            name,
            version,
            Weights::Transformer(ResidentTransformer::Cpu(model)),
        ))
    }

    fn keep(&self, name: &str, version: u64, weights: Weights) -> Arc<Loaded> {
        let arch = match weights {
            Weights::Mlp { .. } => "mlp",
            Weights::Transformer(_) => "transformer",
        };
        let loaded = Arc::new(Loaded {
            name: name.to_owned(),
            version,
            weights,
        });
        self.resident().insert(name.to_owned(), Arc::clone(&loaded));
        tracing::info!(model = %name, version, arch, device = %self.device.id(), "model loaded");
        loaded
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
pub(crate) enum UploadFailure {
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

/// [`upload_failure`] for a transformer's upload: the same rule.
pub(crate) fn transformer_upload_failure(name: &str, err: GpuTransformerError) -> UploadFailure {
    match err {
        GpuTransformerError::Device(err) => upload_failure(name, GpuMlpError::Device(err)),
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

/// How many windows of a transformer's batch run in one pass: all of them
/// when `room` is unknown (a CPU worker), else as many as the room holds at
/// `per_window` bytes each, at least one (a batch that does not fit is cut
/// into passes, never failed).
pub fn windows_per_pass(room: Option<u64>, per_window: u64, windows: usize) -> usize {
    let all = windows.max(1);
    match room {
        None => all,
        Some(room) => {
            let fit = room / per_window.max(1);
            usize::try_from(fit).unwrap_or(usize::MAX).clamp(1, all)
        }
    }
}

/// The file format's transformer as the kernels crate sees it.
pub fn to_transformer(model: TransformerModel) -> Transformer {
    let s = model.shape;
    Transformer {
        config: xf::Config {
            features: s.features,
            window: s.window,
            d_model: s.d_model,
            heads: s.heads,
            layers: s.layers,
            ff: s.ff,
            outputs: s.outputs,
            causal: s.causal,
            pooling: match s.pooling {
                xf_format::Pooling::Last => xf::Pooling::Last,
                xf_format::Pooling::Mean => xf::Pooling::Mean,
            },
            positions: match s.positions {
                xf_format::Positions::Learned => xf::Positions::Learned,
                xf_format::Positions::Sinusoidal => xf::Positions::Sinusoidal,
            },
        },
        params: model.params,
    }
}

/// The kernels' transformer back in the file format's form (to save a
/// trained one).
pub fn from_transformer(model: Transformer) -> TransformerModel {
    let c = model.config;
    TransformerModel {
        shape: xf_format::TransformerShape {
            features: c.features,
            window: c.window,
            d_model: c.d_model,
            heads: c.heads,
            layers: c.layers,
            ff: c.ff,
            outputs: c.outputs,
            causal: c.causal,
            pooling: match c.pooling {
                xf::Pooling::Last => xf_format::Pooling::Last,
                xf::Pooling::Mean => xf_format::Pooling::Mean,
            },
            positions: match c.positions {
                xf::Positions::Learned => xf_format::Positions::Learned,
                xf::Positions::Sinusoidal => xf_format::Positions::Sinusoidal,
            },
        },
        params: model.params,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_to_the_room_never_refused() {
        // A CPU worker: no ledger, one pass.
        assert_eq!(windows_per_pass(None, 1_000, 1_000), 1_000);
        // Room for 250 windows: four passes of 250.
        assert_eq!(windows_per_pass(Some(250_500), 1_000, 1_000), 250);
        // More room than the batch needs: one pass.
        assert_eq!(windows_per_pass(Some(u64::MAX), 1_000, 1_000), 1_000);
        // No room at all: one window at a time, not a failure.
        assert_eq!(windows_per_pass(Some(0), 1_000, 1_000), 1);
        assert_eq!(windows_per_pass(Some(10), 0, 3), 3);
    }

    #[test]
    fn transformers_convert_both_ways_unchanged() {
        let shape = xf_format::TransformerShape {
            features: 3,
            window: 5,
            d_model: 8,
            heads: 2,
            layers: 2,
            ff: 16,
            outputs: 2,
            causal: true,
            pooling: xf_format::Pooling::Mean,
            positions: xf_format::Positions::Sinusoidal,
        };
        let model = TransformerModel::random(shape, 9).unwrap();
        let kernels = to_transformer(model.clone());
        assert_eq!(kernels, Transformer::random(kernels.config, 9).unwrap());
        assert_eq!(kernels.config.parameter_bytes(), shape.parameter_bytes());
        assert_eq!(from_transformer(kernels), model);
    }

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
