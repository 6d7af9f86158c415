//! Host-side checks of the GPU path: the forward plan run by a reference
//! column-major GEMM and reference kernels on the host must give the CPU
//! twin's outputs, which checks every offset, leading dimension and batch
//! stride the device will be given; the sizing and cutting arithmetic.

use super::backward::{
    T_DOUT, T_GRAD, T_OUT, T_RAW, TRAIN_WORKSPACE, backward_plan, train_fixed, train_forward_plan,
    train_per_window,
};
use super::plan::{Buf, GemmOp, Op, View, WORKSPACE, chunks, forward_plan, per_window};
use super::*;
use crate::transformer::{Pooling, forward_cpu, gradients_cpu};

/// `C_i = alpha op(A_i) op(B_i) + beta C_i`, column-major, as cuBLAS's
/// `sgemmStridedBatched` (beta 0 ignores what C held).
fn reference_gemm(g: &GemmOp, a: &[f32], b: &[f32], c: &mut [f32]) {
    for i in 0..g.batch {
        let (sa, sb, sc) = (i * g.stride_a, i * g.stride_b, i * g.stride_c);
        for col in 0..g.n {
            for row in 0..g.m {
                let mut sum = 0.0f32;
                for p in 0..g.k {
                    let av = if g.transpose_a {
                        a[sa + p + row * g.lda]
                    } else {
                        a[sa + row + p * g.lda]
                    };
                    let bv = if g.transpose_b {
                        b[sb + col + p * g.ldb]
                    } else {
                        b[sb + p + col * g.ldb]
                    };
                    sum += av * bv;
                }
                let at = sc + row + col * g.ldc;
                c[at] = if g.beta == 0.0 {
                    g.alpha * sum
                } else {
                    g.alpha * sum + g.beta * c[at]
                };
            }
        }
    }
}

fn gelu(u: f32) -> f32 {
    0.5 * u * (1.0 + (0.797_884_6 * (u + 0.044_715 * u * u * u)).tanh())
}

/// The host's copy of every buffer a plan names.
struct HostBuffers {
    params: Vec<f32>,
    positions: Vec<f32>,
    work: Vec<Vec<f32>>,
}

impl HostBuffers {
    fn read(&self, v: View) -> Vec<f32> {
        let source = match v.buf {
            Buf::Params => &self.params,
            Buf::Positions => &self.positions,
            Buf::Work(i) => &self.work[i],
        };
        source[v.offset..v.offset + v.len].to_vec()
    }

    fn len(&self, buf: Buf) -> usize {
        match buf {
            Buf::Params => self.params.len(),
            Buf::Positions => self.positions.len(),
            Buf::Work(i) => self.work[i].len(),
        }
    }

    /// Runs one op as the device would, after the same check.
    fn run(&mut self, op: &Op) {
        op.check(&|buf| self.len(buf))
            .unwrap_or_else(|e| panic!("plan check: {e}"));
        let out = op.output();
        let inputs: Vec<Vec<f32>> = op.inputs().into_iter().map(|v| self.read(v)).collect();
        let Buf::Work(o) = out.buf else {
            panic!("writes outside the workspace")
        };
        let y = &mut self.work[o][out.offset..out.offset + out.len];
        match op {
            Op::Gemm(g) => reference_gemm(g, &inputs[0], &inputs[1], y),
            Op::Normalize { n, features, .. } => {
                for (i, out) in y.iter_mut().enumerate().take(*n) {
                    *out = (inputs[0][i] - inputs[1][i % features]) / inputs[2][i % features];
                }
            }
            Op::BiasPositions {
                n, cols, period, ..
            } => {
                for (i, out) in y.iter_mut().enumerate().take(*n) {
                    let (c, step) = (i % cols, (i / cols) % period);
                    *out = (*out + inputs[0][c]) + inputs[1][step * cols + c];
                }
            }
            Op::BiasAdd { n, cols, .. } => {
                for i in 0..*n {
                    y[i] += inputs[0][i % cols];
                }
            }
            Op::BiasGelu { n, cols, .. } => {
                for i in 0..*n {
                    y[i] = gelu(y[i] + inputs[0][i % cols]);
                }
            }
            Op::LayerNorm { rows, width, .. } => {
                let w = *width;
                for r in 0..*rows {
                    let row = &inputs[0][r * w..(r + 1) * w];
                    let mean = row.iter().sum::<f32>() / w as f32;
                    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / w as f32;
                    let rstd = 1.0 / (var + crate::transformer::LN_EPS).sqrt();
                    for c in 0..w {
                        y[r * w + c] = (row[c] - mean) * rstd * inputs[1][c] + inputs[2][c];
                    }
                }
            }
            Op::Softmax {
                rows,
                width,
                causal,
                scale,
                ..
            } => {
                let w = *width;
                for r in 0..*rows {
                    let s = &mut y[r * w..(r + 1) * w];
                    let visible = if *causal { r % w + 1 } else { w };
                    let max = s[..visible]
                        .iter()
                        .map(|v| v * scale)
                        .fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for v in &mut s[..visible] {
                        *v = (*v * scale - max).exp();
                        sum += *v;
                    }
                    for (c, v) in s.iter_mut().enumerate() {
                        *v = if c < visible { *v / sum } else { 0.0 };
                    }
                }
            }
            Op::Pool {
                n,
                steps,
                width,
                mean,
                ..
            } => {
                for (i, out) in y.iter_mut().enumerate().take(*n) {
                    let (w, c) = (i / width, i % width);
                    let at = |t: usize| inputs[0][(w * steps + t) * width + c];
                    *out = if *mean {
                        (0..*steps).map(at).sum::<f32>() / *steps as f32
                    } else {
                        at(steps - 1)
                    };
                }
            }
            Op::Copy { src, .. } => y[..src.len].copy_from_slice(&inputs[0]),
            Op::Gelu { n, .. } => {
                for i in 0..*n {
                    y[i] = gelu(inputs[0][i]);
                }
            }
            Op::GeluBack { n, .. } => {
                for i in 0..*n {
                    y[i] *= gelu_derivative(inputs[0][i]);
                }
            }
            Op::LnStats { rows, width, .. } => {
                let w = *width;
                for r in 0..*rows {
                    let row = &inputs[0][r * w..(r + 1) * w];
                    let mean = row.iter().sum::<f32>() / w as f32;
                    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / w as f32;
                    y[2 * r] = mean;
                    y[2 * r + 1] = 1.0 / (var + crate::transformer::LN_EPS).sqrt();
                }
            }
            Op::LnBack {
                rows,
                width,
                accumulate,
                ..
            } => {
                let (dy, x, stats, gain) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3]);
                let w = *width;
                for r in 0..*rows {
                    let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
                    let h = |c: usize| (x[r * w + c] - mean) * rstd;
                    let d = |c: usize| dy[r * w + c] * gain[c];
                    let mean_d = (0..w).map(d).sum::<f32>() / w as f32;
                    let mean_dh = (0..w).map(|c| d(c) * h(c)).sum::<f32>() / w as f32;
                    for c in 0..w {
                        let value = rstd * (d(c) - mean_d - h(c) * mean_dh);
                        let at = &mut y[r * w + c];
                        *at = if *accumulate { *at + value } else { value };
                    }
                }
            }
            Op::LnGainGrad { rows, width, .. } => {
                let (dy, x, stats) = (&inputs[0], &inputs[1], &inputs[2]);
                let w = *width;
                for c in 0..w {
                    for r in 0..*rows {
                        let h = (x[r * w + c] - stats[2 * r]) * stats[2 * r + 1];
                        y[c] += dy[r * w + c] * h;
                    }
                }
            }
            Op::ColumnSums { rows, cols, .. } => {
                for c in 0..*cols {
                    for r in 0..*rows {
                        y[c] += inputs[0][r * cols + c];
                    }
                }
            }
            Op::SoftmaxBack {
                rows, width, scale, ..
            } => {
                let w = *width;
                for r in 0..*rows {
                    let p = &inputs[0][r * w..(r + 1) * w];
                    let g = &mut y[r * w..(r + 1) * w];
                    let dot: f32 = g.iter().zip(p).map(|(a, b)| a * b).sum();
                    for (value, prob) in g.iter_mut().zip(p) {
                        *value = prob * (*value - dot) * scale;
                    }
                }
            }
            Op::PoolBack {
                n,
                steps,
                width,
                mean,
                ..
            } => {
                for (i, out) in y.iter_mut().enumerate().take(*n) {
                    let (c, row) = (i % width, i / width);
                    let (w, t) = (row / steps, row % steps);
                    let g = inputs[0][w * width + c];
                    *out = if *mean {
                        g / *steps as f32
                    } else if t == steps - 1 {
                        g
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

fn gelu_derivative(u: f32) -> f32 {
    let c = 0.797_884_6f32;
    let th = (c * (u + 0.044_715 * u * u * u)).tanh();
    0.5 * (1.0 + th) + 0.5 * u * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044_715 * u * u)
}

/// The plan's outputs for `windows` windows, run on the host in runs of at
/// most `capacity`, as `GpuTransformer::forward` runs them on the device.
fn run_plan(model: &Transformer, inputs: &[f32], windows: usize, capacity: usize) -> Vec<f32> {
    let config = &model.config;
    let offsets = Offsets::new(config);
    let mut host = HostBuffers {
        params: model.params.clone(),
        positions: match config.positions {
            Positions::Learned => Vec::new(),
            Positions::Sinusoidal => sinusoidal(config.window, config.d_model),
        },
        // NaN-filled, so a read of something the plan never wrote shows.
        work: per_window(config)
            .iter()
            .map(|floats| vec![f32::NAN; capacity * floats])
            .collect(),
    };
    let (per, o) = (config.window_floats(), config.outputs);
    let mut out = Vec::new();
    for run in chunks(windows, capacity) {
        host.work[RAW][..run.len() * per].copy_from_slice(&inputs[run.start * per..run.end * per]);
        for op in forward_plan(config, &offsets, run.len()) {
            host.run(&op);
        }
        out.extend_from_slice(&host.work[OUT][..run.len() * o]);
    }
    out
}

fn config(causal: bool, pooling: Pooling, positions: Positions) -> Config {
    Config {
        features: 3,
        window: 6,
        d_model: 8,
        heads: 2,
        layers: 2,
        ff: 12,
        outputs: 2,
        causal,
        pooling,
        positions,
    }
}

/// A seeded model with non-trivial normalisation, biases and gains.
fn model(config: Config) -> Transformer {
    let mut model = Transformer::random(config, 7).expect("model");
    let offsets = Offsets::new(&config);
    for k in 0..config.features {
        model.params[offsets.mean + k] = 0.2 * k as f32;
        model.params[offsets.std + k] = 1.0 + 0.3 * k as f32;
    }
    // Every parameter after the normalisation gets a small ripple, so no
    // bias is zero and no gain is one.
    for (i, p) in model.params[2 * config.features..].iter_mut().enumerate() {
        *p += 0.05 * (i as f32 * 0.37).sin();
    }
    model
}

fn inputs(windows: usize, config: &Config) -> Vec<f32> {
    (0..windows * config.window_floats())
        .map(|i| (i as f32 * 0.618).sin() * 1.5)
        .collect()
}

fn assert_close(what: &str, got: &[f32], expect: &[f32], tolerance: f32) {
    assert_eq!(got.len(), expect.len(), "{what}: lengths");
    for (i, (g, e)) in got.iter().zip(expect).enumerate() {
        assert!(
            (g - e).abs() <= tolerance * e.abs().max(1.0),
            "{what}[{i}]: plan {g}, CPU twin {e}"
        );
    }
}

/// Every mask, pooling and positions kind: the plan's GEMMs (leading
/// dimensions, strides, offsets) and kernels compute the CPU twin's
/// forward.
#[test]
fn the_plan_computes_the_cpu_twins_forward() {
    for causal in [false, true] {
        for pooling in [Pooling::Last, Pooling::Mean] {
            for positions in [Positions::Learned, Positions::Sinusoidal] {
                let config = config(causal, pooling, positions);
                let model = model(config);
                let x = inputs(5, &config);
                let expect = forward_cpu(&model, &x, 5).expect("cpu");
                let got = run_plan(&model, &x, 5, 5);
                let what = format!("{causal} {pooling:?} {positions:?}");
                assert_close(&what, &got, &expect, 1e-5);
                assert!(got.iter().all(|v| v.is_finite()), "{what}: {got:?}");
            }
        }
    }
}

/// A batch cut into runs of 2 (the last of 1) gives what one pass gives.
#[test]
fn a_cut_batch_gives_the_same_outputs() {
    let config = config(true, Pooling::Mean, Positions::Learned);
    let model = model(config);
    let x = inputs(5, &config);
    let whole = run_plan(&model, &x, 5, 5);
    let cut = run_plan(&model, &x, 5, 2);
    assert_eq!(whole, cut);
}

/// A single head and a single window (batch 1 in every strided GEMM), and
/// one feature: the edge sizes.
#[test]
fn the_plan_holds_at_the_edges() {
    let config = Config {
        features: 1,
        window: 1,
        d_model: 4,
        heads: 1,
        layers: 1,
        ff: 3,
        outputs: 1,
        causal: true,
        pooling: Pooling::Last,
        positions: Positions::Sinusoidal,
    };
    let model = model(config);
    let x = inputs(3, &config);
    let expect = forward_cpu(&model, &x, 3).expect("cpu");
    assert_close("edge", &run_plan(&model, &x, 3, 1), &expect, 1e-5);
}

#[test]
fn chunks_cover_the_batch_in_order() {
    // (windows, capacity, the runs as (start, end)).
    type Case = (usize, usize, &'static [(usize, usize)]);
    let cases: &[Case] = &[
        (0, 4, &[]),
        (3, 4, &[(0, 3)]),
        (4, 4, &[(0, 4)]),
        (9, 4, &[(0, 4), (4, 8), (8, 9)]),
        (2, 0, &[(0, 1), (1, 2)]),
    ];
    for (windows, capacity, expect) in cases {
        let got: Vec<(usize, usize)> = chunks(*windows, *capacity)
            .into_iter()
            .map(|r| (r.start, r.end))
            .collect();
        assert_eq!(got, *expect, "{windows} by {capacity}");
    }
}

/// The ledger's figure is the parameters, the table and exactly the
/// workspace `device.rs` allocates (per_window's buffers), and
/// batch_that_fits inverts it.
#[test]
fn forward_bytes_books_what_is_allocated() {
    let config = Config {
        features: 32,
        window: 128,
        d_model: 256,
        heads: 8,
        layers: 4,
        ff: 1024,
        outputs: 1,
        causal: true,
        pooling: Pooling::Last,
        positions: Positions::Sinusoidal,
    };
    let (t, f, d) = (128u64, 32u64, 256u64);
    let per = 2 * t * f + 6 * t * d + 8 * t * t + t * 1024 + d + 1;
    assert_eq!(per_window(&config).iter().sum::<usize>() as u64, per);
    assert_eq!(WORKSPACE.len(), per_window(&config).len());
    let fixed = config.parameter_bytes() + 4 * t * d;
    assert_eq!(GpuTransformer::forward_bytes(&config, 0), fixed);
    assert_eq!(
        GpuTransformer::forward_bytes(&config, 1000),
        fixed + 4 * 1000 * per
    );
    for batch in [1usize, 7, 1000] {
        let bytes = GpuTransformer::forward_bytes(&config, batch);
        assert_eq!(GpuTransformer::batch_that_fits(&config, bytes), batch);
        assert_eq!(
            GpuTransformer::batch_that_fits(&config, bytes - 1),
            batch - 1
        );
    }
    assert_eq!(GpuTransformer::batch_that_fits(&config, fixed - 1), 0);
    let learned = Config {
        positions: Positions::Learned,
        ..config
    };
    assert_eq!(
        GpuTransformer::forward_bytes(&learned, 0),
        learned.parameter_bytes()
    );
}

/// What the plan checker refuses: a view past its buffer, a leading
/// dimension below the rows, an op that reads what it writes.
#[test]
fn the_plan_check_refuses_bad_ops() {
    let config = config(false, Pooling::Last, Positions::Learned);
    let offsets = Offsets::new(&config);
    let plan = forward_plan(&config, &offsets, 2);
    let sizes = per_window(&config);
    let lengths = |buf: Buf| match buf {
        Buf::Params => config.parameter_count(),
        Buf::Positions => 0,
        Buf::Work(i) => 2 * sizes[i],
    };
    for op in &plan {
        op.check(&lengths).expect("the plan passes its own check");
    }
    // With room for one window only, a two-window plan runs past.
    let small = |buf: Buf| match buf {
        Buf::Work(i) => sizes[i],
        other => lengths(other),
    };
    assert!(plan.iter().any(|op| op.check(&small).is_err()));
    let Some(Op::Gemm(gemm)) = plan
        .iter()
        .find(|op| matches!(op, Op::Gemm(g) if g.batch > 1))
    else {
        panic!("no batched GEMM in the plan");
    };
    let narrow = Op::Gemm(GemmOp {
        lda: gemm.k - 1,
        ..gemm.clone()
    });
    assert!(
        narrow
            .check(&lengths)
            .is_err_and(|e| e.contains("leading dimension"))
    );
    let aliased = Op::BiasAdd {
        n: 4,
        cols: 4,
        bias: View {
            buf: Buf::Work(plan::STREAM),
            offset: 0,
            len: 4,
        },
        y: View {
            buf: Buf::Work(plan::STREAM),
            offset: 4,
            len: 4,
        },
    };
    assert!(
        aliased
            .check(&lengths)
            .is_err_and(|e| e.contains("reads the buffer it writes"))
    );
}

/// The worker's model cache shares a resident model between task threads,
/// as it does a `GpuMlp`.
#[test]
fn a_resident_model_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<GpuTransformer>();
}

/// The launch shapes the host picks match the kernels: every kernel the
/// module lists is defined in the .cu, the warp-per-row kernels' rows per
/// block is the .cu's `TF_ROWS`, and each grid covers its work.
#[test]
fn launch_shapes_match_the_kernels() {
    for name in SOURCE.kernels {
        assert!(
            SOURCE
                .code
                .contains(&format!("extern \"C\" __global__ void {name}(")),
            "{name} is not in transformer.cu"
        );
    }
    let rows_define = format!("#define TF_ROWS {}\n", device::ROWS_PER_BLOCK);
    assert!(
        SOURCE.code.contains(&rows_define),
        "TF_ROWS is not {rows_define}"
    );
    // The column sums' blocks are (32, TF_SUM_LANES) and cover every
    // column.
    let lanes = device::column_blocks(1).block_dim.1;
    assert!(
        SOURCE
            .code
            .contains(&format!("#define TF_SUM_LANES {lanes}\n")),
        "TF_SUM_LANES is not {lanes}"
    );
    for cols in [1usize, 31, 32, 33, 128 * 256] {
        let config = device::column_blocks(cols);
        assert_eq!(config.block_dim.0, 32);
        let covered = u64::from(config.grid_dim.0) * 32;
        assert!(covered >= cols as u64 && covered < cols as u64 + 32);
    }
    for n in [1usize, 255, 256, 257, 1000 * 128 * 1024] {
        let config = device::elementwise(n);
        assert_eq!(config.block_dim, (THREADS, 1, 1));
        let threads = u64::from(config.grid_dim.0) * u64::from(THREADS);
        assert!(threads >= n as u64 && threads < n as u64 + u64::from(THREADS));
    }
    for rows in [1usize, 7, 8, 9, 1000 * 8 * 128] {
        let config = device::warp_per_row(rows);
        assert_eq!(config.block_dim, (32, device::ROWS_PER_BLOCK, 1));
        let covered = u64::from(config.grid_dim.0) * u64::from(device::ROWS_PER_BLOCK);
        assert!(covered >= rows as u64 && covered < rows as u64 + 8);
    }
}

/// The training plans run on the host, as `GpuTransformer::accumulate`
/// runs them on the device (runs of at most `capacity`, the loss gradient
/// from the host between the two plans): the gradient and the loss.
fn run_train_plans(
    model: &Transformer,
    inputs: &[f32],
    targets: &[f32],
    windows: usize,
    capacity: usize,
) -> (Vec<f32>, f64) {
    let config = &model.config;
    let offsets = Offsets::new(config);
    let (per_sizes, fixed) = (train_per_window(config), train_fixed(config));
    let mut host = HostBuffers {
        params: model.params.clone(),
        positions: match config.positions {
            Positions::Learned => Vec::new(),
            Positions::Sinusoidal => sinusoidal(config.window, config.d_model),
        },
        work: per_sizes
            .iter()
            .zip(&fixed)
            .map(|(floats, fixed)| vec![f32::NAN; capacity * floats + fixed])
            .collect(),
    };
    host.work[T_GRAD].fill(0.0);
    let (per, o) = (config.window_floats(), config.outputs);
    let factor = 2.0 / (windows * o) as f32;
    let mut error = 0.0;
    for run in chunks(windows, capacity) {
        host.work[T_RAW][..run.len() * per]
            .copy_from_slice(&inputs[run.start * per..run.end * per]);
        for op in train_forward_plan(config, &offsets, run.len()) {
            host.run(&op);
        }
        let y = host.work[T_OUT][..run.len() * o].to_vec();
        for (i, (y, t)) in y
            .iter()
            .zip(&targets[run.start * o..run.end * o])
            .enumerate()
        {
            error += (f64::from(*y) - f64::from(*t)).powi(2);
            host.work[T_DOUT][i] = factor * (y - t);
        }
        for op in backward_plan(config, &offsets, run.len()) {
            host.run(&op);
        }
    }
    (host.work[T_GRAD].clone(), error / (windows * o) as f64)
}

/// Each gradient within `tolerance` of the CPU twin's, relative to the
/// largest gradient of the model (rounding in sums of many terms).
fn assert_gradients_close(what: &str, got: &[f32], expect: &[f32], tolerance: f32) {
    assert_eq!(got.len(), expect.len(), "{what}: lengths");
    let scale = expect.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: an all-zero gradient checks nothing");
    for (i, (g, e)) in got.iter().zip(expect).enumerate() {
        assert!(
            (g - e).abs() <= tolerance * scale,
            "{what}[{i}]: plan {g}, CPU twin {e} (largest {scale})"
        );
    }
}

/// Every mask, pooling and positions kind: the training plans (every
/// transpose, leading dimension and stride of the backward's GEMMs, the
/// per-layer slots, the backward kernels' formulas) give the CPU twin's
/// gradient and loss, in one run and cut into runs.
#[test]
fn the_backward_plan_computes_the_cpu_twins_gradient() {
    for causal in [false, true] {
        for pooling in [Pooling::Last, Pooling::Mean] {
            for positions in [Positions::Learned, Positions::Sinusoidal] {
                let config = config(causal, pooling, positions);
                let model = model(config);
                let x = inputs(5, &config);
                let targets: Vec<f32> = (0..5 * config.outputs)
                    .map(|i| (i as f32 * 0.9).cos())
                    .collect();
                let (expect, loss) = gradients_cpu(&model, &x, &targets, 5).expect("cpu");
                let what = format!("{causal} {pooling:?} {positions:?}");
                for capacity in [5, 2] {
                    let (got, got_loss) = run_train_plans(&model, &x, &targets, 5, capacity);
                    let what = format!("{what} runs of {capacity}");
                    assert_gradients_close(&what, &got, &expect, 1e-5);
                    assert!((got_loss - loss).abs() <= 1e-6 * loss.max(1.0), "{what}");
                }
                // The normalisation is data: no gradient.
                assert!(expect[..2 * config.features].iter().all(|g| *g == 0.0));
            }
        }
    }
}

/// One window of one step, one head, one feature, one layer (batch 1 in
/// every strided GEMM): the training plans at the edges.
#[test]
fn the_backward_plan_holds_at_the_edges() {
    let config = Config {
        features: 1,
        window: 1,
        d_model: 4,
        heads: 1,
        layers: 1,
        ff: 3,
        outputs: 1,
        causal: true,
        pooling: Pooling::Mean,
        positions: Positions::Learned,
    };
    let model = model(config);
    let x = inputs(3, &config);
    let targets = [0.5, -0.25, 1.0];
    let (expect, _) = gradients_cpu(&model, &x, &targets, 3).expect("cpu");
    let (got, _) = run_train_plans(&model, &x, &targets, 3, 1);
    assert_gradients_close("edge", &got, &expect, 1e-5);
}

/// The training ledger figure: parameters, moments, gradient, the table
/// and every training buffer; `train_batch_that_fits` inverts it.
#[test]
fn train_bytes_books_what_training_allocates() {
    let config = config(true, Pooling::Last, Positions::Sinusoidal);
    let per: usize = train_per_window(&config).iter().sum();
    let table = 4 * (config.window * config.d_model) as u64;
    let fixed = 4 * config.parameter_bytes() + table;
    assert_eq!(GpuTransformer::train_bytes(&config, 0), fixed);
    assert_eq!(
        GpuTransformer::train_bytes(&config, 10),
        fixed + 4 * 10 * per as u64
    );
    // Per layer, a window keeps its activations: more than the forward's
    // whole workspace once there are two layers.
    assert!(
        GpuTransformer::train_bytes(&config, 1) - fixed
            > GpuTransformer::forward_bytes(&config, 1) - GpuTransformer::forward_bytes(&config, 0)
    );
    for batch in [1usize, 3, 64] {
        let bytes = GpuTransformer::train_bytes(&config, batch);
        assert_eq!(GpuTransformer::train_batch_that_fits(&config, bytes), batch);
        assert_eq!(
            GpuTransformer::train_batch_that_fits(&config, bytes - 1),
            batch - 1
        );
    }
    assert_eq!(GpuTransformer::train_batch_that_fits(&config, fixed - 1), 0);
    assert_eq!(TRAIN_WORKSPACE.len(), train_per_window(&config).len());
}

/// `op`'s Debug form with every view left out: what it computes, not
/// where.
fn without_views(op: &Op) -> String {
    let mut text = format!("{op:?}");
    while let Some(start) = text.find("View {") {
        let end = text[start..]
            .find('}')
            .map_or(text.len(), |e| start + e + 1);
        text.replace_range(start..end, "_");
    }
    text
}

/// The training forward is the inference plan's op sequence (one builder,
/// `plan::forward_ops`) over other views: with the copies that keep the
/// residual stream and the split of the fused bias and GELU taken out,
/// every operation is the same, GEMM shapes, leading dimensions and
/// strides included.
#[test]
fn the_training_forward_is_the_inference_plan_keeping_activations() {
    for causal in [false, true] {
        for positions in [Positions::Learned, Positions::Sinusoidal] {
            let config = config(causal, Pooling::Mean, positions);
            let offsets = Offsets::new(&config);
            let inference: Vec<String> = forward_plan(&config, &offsets, 3)
                .iter()
                .map(without_views)
                .collect();
            let training = train_forward_plan(&config, &offsets, 3);
            let copies = training
                .iter()
                .filter(|op| matches!(op, Op::Copy { .. }))
                .count();
            assert_eq!(copies, 2 * config.layers, "two kept streams a block");
            let mut merged: Vec<String> = Vec::new();
            let mut ops = training.iter().peekable();
            while let Some(op) = ops.next() {
                match (op, ops.peek()) {
                    (Op::Copy { .. }, _) => {}
                    (Op::BiasAdd { n, cols, bias, y }, Some(Op::Gelu { u, g, .. })) if u == y => {
                        merged.push(without_views(&Op::BiasGelu {
                            n: *n,
                            cols: *cols,
                            bias: *bias,
                            y: *g,
                        }));
                        ops.next();
                    }
                    (op, _) => merged.push(without_views(op)),
                }
            }
            assert_eq!(merged, inference, "{causal} {positions:?}");
        }
    }
}

/// The training forward's outputs on the host are the inference plan's,
/// bit for bit: the same operations in the same order.
#[test]
fn the_training_forward_gives_the_inference_outputs() {
    for pooling in [Pooling::Last, Pooling::Mean] {
        let config = config(true, pooling, Positions::Sinusoidal);
        let model = model(config);
        let offsets = Offsets::new(&config);
        let x = inputs(4, &config);
        let mut host = HostBuffers {
            params: model.params.clone(),
            positions: sinusoidal(config.window, config.d_model),
            work: train_per_window(&config)
                .iter()
                .zip(&train_fixed(&config))
                .map(|(floats, fixed)| vec![f32::NAN; 4 * floats + fixed])
                .collect(),
        };
        host.work[T_RAW][..x.len()].copy_from_slice(&x);
        for op in train_forward_plan(&config, &offsets, 4) {
            host.run(&op);
        }
        let trained = host.work[T_OUT][..4 * config.outputs].to_vec();
        assert_eq!(trained, run_plan(&model, &x, 4, 4), "{pooling:?}");
    }
}
