//! The model kinds on a worker: `infer`, `predict_batch` and `train` run a
//! registered model from the worker's cache (`crate::model_cache`): an MLP
//! on the GPU through cuBLAS when the model is resident there, else its CPU
//! twin; a transformer's forward pass on the GPU (cuBLAS and
//! `cuda/transformer.cu`) when it is resident there, else its CPU twin, its
//! batch cut into passes that fit the device's free memory where a ledger
//! keeps it. `train` fine-tunes a transformer on the GPU (forward, backward
//! and Adam, its runs cut to the free memory) when it is resident there,
//! else on its CPU twin; the worker logs which ran it.

use std::sync::Arc;

use tandem_kernels::mlp::{self, Mlp, TrainConfig};
use tandem_kernels::mlp_gpu::GpuMlp;
use tandem_kernels::transformer::{self as xf, Transformer};
use tandem_kernels::transformer_gpu::GpuTransformer;
use tandem_shared::ErrorCode;
use tandem_shared::kind::model_kinds::{
    Infer, InferOutput, InferParams, Optimizer, PredictBatch, PredictBatchOutput,
    PredictBatchParams, Prediction, Train, TrainOutput, TrainParams,
};
use tandem_shared::model_format::sha256_hex;

use crate::context::{TaskContext, blocking};
use crate::error::TaskError;
use crate::handler::Handler;
use crate::kind_table::KindTable;
use crate::model_cache::{
    Loaded, ResidentTransformer, UploadFailure, Weights, from_mlp, from_transformer,
    transformer_upload_failure, windows_per_pass,
};

pub(crate) fn register(kinds: &mut KindTable) {
    use crate::device::gpu_paths::MODEL_PATHS;
    kinds
        .register(InferKind)
        .runs_on_gpu_paths::<Infer>(MODEL_PATHS)
        .register(PredictBatchKind)
        .runs_on_gpu_paths::<PredictBatch>(MODEL_PATHS)
        .register(TrainKind)
        .runs_on_gpu_paths::<Train>(MODEL_PATHS);
}

fn bad(message: String) -> TaskError {
    TaskError::fatal(ErrorCode::BAD_PARAMS, message)
}

/// Checks that `values` hold `rows` rows of the model's `width`.
fn check_width(what: &str, values: &[f32], rows: u64, width: usize) -> Result<(), TaskError> {
    if values.len() as u64 != rows.saturating_mul(width as u64) {
        return Err(bad(format!(
            "{what} hold {} numbers; {rows} rows of the model's width {width} need {}",
            values.len(),
            rows.saturating_mul(width as u64)
        )));
    }
    Ok(())
}

/// Runs `rows` rows through the loaded model: an MLP on its GPU copy when
/// there is one, a transformer on its CPU twin in passes of
/// [`windows_per_pass`] windows.
async fn forward(
    loaded: Arc<Loaded>,
    ctx: &TaskContext,
    inputs: Vec<f32>,
    rows: usize,
) -> Result<Vec<f32>, TaskError> {
    let gpu = ctx.gpu.clone();
    let room = ctx.model_cache()?.activation_room(&ctx.id);
    blocking(ctx, move |stop| match &loaded.weights {
        Weights::Mlp { mlp, gpu: resident } => match (resident, gpu) {
            (Some(resident), Some(gpu)) => resident
                .forward(&gpu, &inputs, rows)
                .map_err(TaskError::from),
            _ => mlp::forward_cpu(mlp, &inputs, rows).map_err(|e| bad(e.to_string())),
        },
        // On the GPU: each pass's workspace is what
        // `GpuTransformer::forward_bytes` adds per window over the
        // parameters the cache booked.
        Weights::Transformer(ResidentTransformer::Gpu { device, .. }) if gpu.is_some() => {
            let config = *device.config();
            let per_window = GpuTransformer::forward_bytes(&config, 1)
                - GpuTransformer::forward_bytes(&config, 0);
            let pass = windows_per_pass(room, per_window, rows);
            let outputs = in_passes(
                &loaded.name,
                &config,
                &inputs,
                rows,
                pass,
                stop,
                |chunk, n| match &gpu {
                    Some(gpu) => device.forward(gpu, chunk, n).map_err(TaskError::from),
                    None => Err(bad("no GPU for a GPU-resident transformer".into())),
                },
            );
            // The activations were this task's: booked while it ran (its
            // room), freed when it is done, so the idle model holds only
            // what the ledger admitted.
            device.free_workspace();
            outputs
        }
        Weights::Transformer(resident) => {
            let model = resident.host();
            let pass = windows_per_pass(room, model.config.activation_bytes_per_window(), rows);
            in_passes(
                &loaded.name,
                &model.config,
                &inputs,
                rows,
                pass,
                stop,
                |chunk, n| xf::forward_cpu(model, chunk, n).map_err(|e| bad(e.to_string())),
            )
        }
    })
    .await
}

/// Runs `rows` windows through `run` in passes of `pass` windows (a batch
/// that does not fit is cut, never failed), asking `stop` before each.
fn in_passes(
    name: &str,
    config: &xf::Config,
    inputs: &[f32],
    rows: usize,
    pass: usize,
    stop: &crate::context::Stop,
    mut run: impl FnMut(&[f32], usize) -> Result<Vec<f32>, TaskError>,
) -> Result<Vec<f32>, TaskError> {
    if pass < rows {
        tracing::debug!(
            model = %name,
            rows,
            pass,
            "transformer batch cut to fit the device's free memory"
        );
    }
    let per = config.window_floats().max(1);
    let mut outputs = Vec::with_capacity(rows * config.outputs);
    for chunk in inputs.chunks(pass.max(1) * per) {
        stop.check()?;
        outputs.extend(run(chunk, chunk.len() / per)?);
    }
    Ok(outputs)
}

struct InferKind;

impl Handler for InferKind {
    type Spec = Infer;

    async fn run(&self, p: InferParams, ctx: TaskContext) -> Result<InferOutput, TaskError> {
        let (loaded, cache_hit) = ctx.model_cache()?.get(&p.model, ctx.priority).await?;
        check_width("inputs", &p.inputs, p.batch, loaded.weights.input_width())?;
        let width = loaded.weights.output_width() as u64;
        let version = loaded.version;
        let outputs = forward(loaded, &ctx, p.inputs, p.batch as usize).await?;
        Ok(InferOutput {
            outputs,
            batch: p.batch,
            width,
            model_version: version,
            cache_hit,
        })
    }
}

struct PredictBatchKind;

impl Handler for PredictBatchKind {
    type Spec = PredictBatch;

    async fn run(
        &self,
        p: PredictBatchParams,
        ctx: TaskContext,
    ) -> Result<PredictBatchOutput, TaskError> {
        let (loaded, cache_hit) = ctx.model_cache()?.get(&p.model, ctx.priority).await?;
        let rows = p.symbols.len();
        let inputs: Vec<f32> = p
            .symbols
            .iter()
            .flat_map(|s| s.features.iter().copied())
            .collect();
        check_width(
            "features",
            &inputs,
            rows as u64,
            loaded.weights.input_width(),
        )?;
        let width = loaded.weights.output_width();
        let version = loaded.version;
        let outputs = forward(loaded, &ctx, inputs, rows).await?;
        let predictions = p
            .symbols
            .into_iter()
            .zip(outputs.chunks(width.max(1)))
            .map(|(window, values)| Prediction {
                symbol: window.symbol,
                values: values.to_vec(),
            })
            .collect();
        Ok(PredictBatchOutput {
            predictions,
            model_version: version,
            cache_hit,
        })
    }
}

struct TrainKind;

impl Handler for TrainKind {
    type Spec = Train;

    async fn run(&self, p: TrainParams, ctx: TaskContext) -> Result<TrainOutput, TaskError> {
        let (loaded, _) = ctx.model_cache()?.get(&p.model, ctx.priority).await?;
        check_width("x", &p.x, p.samples, loaded.weights.input_width())?;
        check_width("y", &p.y, p.samples, loaded.weights.output_width())?;
        let config = TrainConfig {
            epochs: p.epochs as usize,
            batch_size: p.batch_size as usize,
            optimizer: match p.optimizer {
                Optimizer::Sgd { lr, momentum } => mlp::Optimizer::Sgd { lr, momentum },
                Optimizer::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                } => mlp::Optimizer::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                },
            },
            seed: p.seed,
        };
        let version = loaded.version;
        // Training changes the weights: it works on its own copy, an MLP on
        // the GPU when the model is resident there.
        let start = match &loaded.weights {
            Weights::Mlp { mlp, gpu } => Start::Mlp {
                mlp: (**mlp).clone(),
                on_gpu: gpu.is_some().then(|| ctx.gpu.clone()).flatten(),
            },
            // A transformer resident on the real GPU trains there, on a
            // copy uploaded for the task, its runs cut to the free memory.
            Weights::Transformer(ResidentTransformer::Gpu { host, .. }) if ctx.gpu.is_some() => {
                Start::Transformer {
                    model: (**host).clone(),
                    on_gpu: ctx.gpu.clone().map(|gpu| {
                        (
                            gpu,
                            ctx.model_cache()
                                .ok()
                                .and_then(|c| c.activation_room(&ctx.id)),
                        )
                    }),
                }
            }
            Weights::Transformer(resident) => Start::Transformer {
                model: (**resident.host()).clone(),
                on_gpu: None,
            },
        };
        let name = loaded.name.clone();
        let samples = p.samples as usize;
        let (file, report) = blocking(&ctx, move |stop| {
            let stopped = || stop.is_set();
            // Progress by epoch, with its loss.
            let epochs = config.epochs;
            let epoch_done = |epoch: usize, loss: f64| {
                let done = epoch + 1;
                stop.progress(done as f64 / epochs.max(1) as f64, || {
                    format!("epoch {done} of {epochs}, loss {loss:.6}")
                });
            };
            let watch = mlp::TrainWatch {
                stop: &stopped,
                epoch_done: &epoch_done,
            };
            let trained = match start {
                Start::Mlp {
                    mlp: start,
                    on_gpu: Some(gpu),
                } => {
                    let mut copy = GpuMlp::upload(&gpu, &start).map_err(TaskError::from)?;
                    copy.train_until(&gpu, &p.x, &p.y, samples, &config, watch)
                        .map_err(TaskError::from)
                        .and_then(|report| {
                            let trained = copy.download().map_err(TaskError::from)?;
                            Ok((from_mlp(trained).encode(), report))
                        })
                }
                Start::Mlp {
                    mlp: mut copy,
                    on_gpu: None,
                } => mlp::train_cpu_until(&mut copy, &p.x, &p.y, samples, &config, watch)
                    .map(|report| (from_mlp(copy).encode(), report))
                    .map_err(|e| bad(e.to_string())),
                Start::Transformer { model, on_gpu } => {
                    let data = TrainData {
                        x: &p.x,
                        y: &p.y,
                        samples,
                        config: &config,
                    };
                    let on_gpu = on_gpu.and_then(|(gpu, room)| {
                        gpu_training(&name, &model.config, room, config.batch_size)
                            .map(|runs| (gpu, runs))
                    });
                    match on_gpu {
                        Some((gpu, runs)) => {
                            train_transformer_on_gpu(&name, model, &gpu, runs, &data, watch)
                        }
                        None => train_transformer_on_cpu(&name, model, &data, watch),
                    }
                }
            };
            // A training the cancel cut short ends as cancelled, whatever
            // error it stopped with.
            stop.check()?;
            trained
        })
        .await?;
        let sha256 = sha256_hex(&file);
        let path = match p.out {
            Some(name) => Some(write_out(ctx.model_cache()?.model_dir(), &name, &file).await?),
            None => None,
        };
        Ok(TrainOutput {
            losses: report.losses.iter().map(|&l| l as f32).collect(),
            steps: report.steps,
            model_version: version,
            weights: path.is_none().then_some(file),
            path,
            sha256,
        })
    }
}

/// What training starts from: its own copy of the weights.
enum Start {
    Mlp {
        mlp: Mlp,
        /// The GPU to train on, when the model is resident there.
        on_gpu: Option<Arc<tandem_kernels::runtime::Gpu>>,
    },
    Transformer {
        model: Transformer,
        /// The GPU to train on and the memory free there for training's
        /// buffers, when the model is resident on a real GPU.
        on_gpu: Option<(Arc<tandem_kernels::runtime::Gpu>, Option<u64>)>,
    },
}

/// A `train` task's data and settings.
struct TrainData<'a> {
    x: &'a [f32],
    y: &'a [f32],
    samples: usize,
    config: &'a TrainConfig,
}

/// How many windows one training run on the GPU takes: what the free
/// memory `room` holds once the training copy's fixed part (its own
/// parameters and position table beside the resident model's, Adam's two
/// moments and the gradient: [`GpuTransformer::train_bytes`] of no
/// windows) is set aside, at most a mini-batch (a larger mini-batch is cut
/// into runs whose gradients add up). `None` when not even one window
/// fits: the CPU twin trains it then.
fn gpu_training(
    name: &str,
    config: &xf::Config,
    room: Option<u64>,
    batch_size: usize,
) -> Option<usize> {
    let fixed = GpuTransformer::train_bytes(config, 0);
    let per_window =
        GpuTransformer::train_bytes(config, 1) - GpuTransformer::train_bytes(config, 0);
    let room = match room {
        Some(room) => match room.checked_sub(fixed) {
            Some(left) if left >= per_window => Some(left),
            _ => {
                tracing::warn!(
                    model = %name,
                    room,
                    needed = fixed + per_window,
                    "transformer trains on the CPU twin: too little free device memory"
                );
                return None;
            }
        },
        None => None,
    };
    Some(windows_per_pass(room, per_window, batch_size))
}

/// Trains a copy of `model` on `gpu` in runs of at most `runs` windows.
/// An upload that fails without harm to the device (no cuBLAS, a kernel
/// that did not load) leaves it to the CPU twin; a sticky fault fails the
/// device, an out-of-memory hands the task back.
fn train_transformer_on_gpu(
    name: &str,
    model: Transformer,
    gpu: &Arc<tandem_kernels::runtime::Gpu>,
    runs: usize,
    data: &TrainData<'_>,
    watch: mlp::TrainWatch<'_>,
) -> Result<(Vec<u8>, mlp::TrainReport), TaskError> {
    let mut copy = match GpuTransformer::upload(gpu, &model) {
        Ok(copy) => copy,
        Err(err) => match transformer_upload_failure(name, err) {
            UploadFailure::Fail(err) => return Err(err),
            UploadFailure::RunOnCpu(why) => {
                tracing::warn!(model = %name, "transformer trains on the CPU twin: {why}");
                return train_transformer_on_cpu(name, model, data, watch);
            }
        },
    };
    copy.set_max_batch(runs);
    let report = copy
        .train_until(gpu, data.x, data.y, data.samples, data.config, watch)
        .map_err(TaskError::from)?;
    let trained = copy.download().map_err(TaskError::from)?;
    tracing::info!(
        model = %name,
        path = "gpu",
        runs,
        steps = report.steps,
        "transformer trained on the GPU"
    );
    Ok((from_transformer(trained).encode(), report))
}

fn train_transformer_on_cpu(
    name: &str,
    mut model: Transformer,
    data: &TrainData<'_>,
    watch: mlp::TrainWatch<'_>,
) -> Result<(Vec<u8>, mlp::TrainReport), TaskError> {
    let report = xf::train_cpu_until(&mut model, data.x, data.y, data.samples, data.config, watch)
        .map_err(|e| bad(e.to_string()))?;
    tracing::info!(
        model = %name,
        path = "cpu_twin",
        steps = report.steps,
        "transformer trained on the CPU twin"
    );
    Ok((from_transformer(model).encode(), report))
}

/// Writes a trained model to `model_dir/<name>` (the fleet's shared
/// volume); a plain file name only, so a task cannot write elsewhere.
async fn write_out(dir: &str, name: &str, file: &[u8]) -> Result<String, TaskError> {
    if dir.is_empty() {
        return Err(bad(
            "out needs the worker's model_dir (TANDEM_MODEL_DIR: a directory on the fleet's shared volume); \
             without out the model comes back in the result"
                .into(),
        ));
    }
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !name.starts_with('.');
    if !plain {
        return Err(bad(format!(
            "out must be a plain file name (letters, digits, '_', '.', '-'), got {name:?}"
        )));
    }
    let path = std::path::Path::new(dir).join(name);
    let bytes = file.to_vec();
    let target = path.clone();
    tokio::task::spawn_blocking(move || std::fs::write(&target, bytes))
        .await
        .map_err(|e| TaskError::new(ErrorCode::HANDLER_ERROR, e.to_string()))?
        .map_err(|e| {
            TaskError::new(
                ErrorCode::HANDLER_ERROR,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
    Ok(path.display().to_string())
}

#[cfg(test)]
mod tests {
    use tandem_shared::kind::model_kinds::{transformer_forward_bytes, transformer_train_bytes};
    use tandem_shared::model_format::transformer::{Pooling, Positions, TransformerShape};

    use super::*;

    fn config(shape: &TransformerShape) -> xf::Config {
        xf::Config {
            features: shape.features,
            window: shape.window,
            d_model: shape.d_model,
            heads: shape.heads,
            layers: shape.layers,
            ff: shape.ff,
            outputs: shape.outputs,
            causal: shape.causal,
            pooling: match shape.pooling {
                Pooling::Last => xf::Pooling::Last,
                Pooling::Mean => xf::Pooling::Mean,
            },
            positions: match shape.positions {
                Positions::Learned => xf::Positions::Learned,
                Positions::Sinusoidal => xf::Positions::Sinusoidal,
            },
        }
    }

    /// The estimate a task declares from the registry record's shape
    /// (shared) is what the GPU path holds for it (kernels): the forward's
    /// workspace for its windows, and the whole training copy.
    #[test]
    fn the_declared_memory_is_what_the_gpu_path_holds() {
        for (layers, positions) in [(1, Positions::Learned), (4, Positions::Sinusoidal)] {
            let shape = TransformerShape {
                features: 32,
                window: 128,
                d_model: 256,
                heads: 8,
                layers,
                ff: 1024,
                outputs: 2,
                causal: true,
                pooling: Pooling::Mean,
                positions,
            };
            let c = config(&shape);
            for windows in [1u64, 16, 1000] {
                let n = windows as usize;
                assert_eq!(
                    transformer_forward_bytes(&shape, windows),
                    GpuTransformer::forward_bytes(&c, n) - GpuTransformer::forward_bytes(&c, 0),
                    "{shape:?} forward of {windows}"
                );
                assert_eq!(
                    transformer_train_bytes(&shape, windows),
                    GpuTransformer::train_bytes(&c, n),
                    "{shape:?} training runs of {windows}"
                );
            }
        }
    }

    /// A training run takes what the room holds after the training copy's
    /// fixed part, at most a mini-batch; with no room for one window the
    /// CPU twin trains; with no ledger (no room known) the whole
    /// mini-batch goes in one run.
    #[test]
    fn training_runs_are_cut_to_the_room() {
        let c = xf::Config {
            features: 4,
            window: 16,
            d_model: 16,
            heads: 2,
            layers: 1,
            ff: 32,
            outputs: 1,
            causal: true,
            pooling: xf::Pooling::Last,
            positions: xf::Positions::Learned,
        };
        let room = |windows: usize| Some(GpuTransformer::train_bytes(&c, windows));
        assert_eq!(gpu_training("m", &c, room(5), 16), Some(5));
        assert_eq!(gpu_training("m", &c, room(64), 16), Some(16));
        assert_eq!(gpu_training("m", &c, room(1), 16), Some(1));
        assert_eq!(gpu_training("m", &c, room(1).map(|r| r - 1), 16), None);
        assert_eq!(gpu_training("m", &c, None, 16), Some(16));
    }
}
