//! Multi-layer perceptrons: the model kinds' network (a price-prediction
//! MLP: layers of weights and biases, a hidden activation, input
//! normalisation), its CPU twin (forward and training) and, in
//! [`crate::mlp_gpu`], its GPU path. The file format lives in
//! `tandem_shared::model`; this module sees plain arrays.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::philox;

/// The activation between hidden layers; the output layer is linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Tanh,
}

/// One dense layer: `outputs x inputs` weights, row-major (row o holds the
/// weights into output o), and `outputs` biases.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A network: `x -> (x - mean) / std -> layer 0 -> activation -> ... ->
/// last layer` (no activation after the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    pub layers: Vec<Layer>,
    pub activation: Activation,
    /// Per input feature.
    pub input_mean: Vec<f32>,
    pub input_std: Vec<f32>,
}

impl Mlp {
    pub fn inputs(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    pub fn outputs(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// Bytes of parameters (f32), what the model occupies on a device
    /// before activations.
    pub fn parameter_bytes(&self) -> u64 {
        let floats: usize = self
            .layers
            .iter()
            .map(|l| l.weight.len() + l.bias.len())
            .sum::<usize>()
            + self.input_mean.len()
            + self.input_std.len();
        4 * floats as u64
    }
}

/// What is wrong with a network, its inputs or a training request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MlpError {
    #[error("the MLP has no layers")]
    NoLayers,
    #[error("MLP layer {layer}: {problem}")]
    BadLayer { layer: usize, problem: String },
    #[error("MLP input normalisation: {0}")]
    BadNormalisation(String),
    #[error("MLP {what}: expected {expected} floats ({rows} rows x {width}), got {got}")]
    BadLength {
        what: &'static str,
        expected: usize,
        rows: usize,
        width: usize,
        got: usize,
    },
    #[error("MLP training: {0}")]
    BadTraining(String),
}

impl Mlp {
    /// A network of the given layer sizes (`[inputs, hidden..., outputs]`)
    /// with seeded random weights (He-uniform under ReLU, Glorot-uniform
    /// under tanh), zero biases and the identity normalisation: fixtures,
    /// benches and `tandem model new`.
    pub fn random(sizes: &[usize], activation: Activation, seed: u64) -> Result<Mlp, MlpError> {
        if sizes.len() < 2 {
            return Err(MlpError::NoLayers);
        }
        let mut state = seed;
        let layers = sizes
            .windows(2)
            .map(|pair| {
                let (inputs, outputs) = (pair[0], pair[1]);
                let limit = match activation {
                    Activation::Relu => (6.0 / inputs.max(1) as f64).sqrt(),
                    Activation::Tanh => (6.0 / (inputs + outputs).max(1) as f64).sqrt(),
                } as f32;
                let weight = (0..inputs * outputs)
                    .map(|_| limit * (2.0 * unit_f32(splitmix64(&mut state)) - 1.0))
                    .collect();
                Layer {
                    inputs,
                    outputs,
                    weight,
                    bias: vec![0.0; outputs],
                }
            })
            .collect();
        let mlp = Mlp {
            layers,
            activation,
            input_mean: vec![0.0; sizes[0]],
            input_std: vec![1.0; sizes[0]],
        };
        mlp.check()?;
        Ok(mlp)
    }

    /// Checks that the layers chain (each layer's inputs are the previous
    /// one's outputs), that every array has its declared length, and that
    /// the normalisation divides by positive finite numbers.
    pub fn check(&self) -> Result<(), MlpError> {
        if self.layers.is_empty() {
            return Err(MlpError::NoLayers);
        }
        for (index, layer) in self.layers.iter().enumerate() {
            let bad = |problem: String| MlpError::BadLayer {
                layer: index,
                problem,
            };
            if layer.inputs == 0 || layer.outputs == 0 {
                return Err(bad(format!(
                    "{} inputs x {} outputs (both must be positive)",
                    layer.inputs, layer.outputs
                )));
            }
            if index > 0 && layer.inputs != self.layers[index - 1].outputs {
                return Err(bad(format!(
                    "takes {} inputs but the layer before has {} outputs",
                    layer.inputs,
                    self.layers[index - 1].outputs
                )));
            }
            if layer.weight.len() != layer.inputs * layer.outputs {
                return Err(bad(format!(
                    "{} weights for {} x {}",
                    layer.weight.len(),
                    layer.outputs,
                    layer.inputs
                )));
            }
            if layer.bias.len() != layer.outputs {
                return Err(bad(format!(
                    "{} biases for {} outputs",
                    layer.bias.len(),
                    layer.outputs
                )));
            }
        }
        let inputs = self.inputs();
        if self.input_mean.len() != inputs || self.input_std.len() != inputs {
            return Err(MlpError::BadNormalisation(format!(
                "{} means and {} standard deviations for {inputs} inputs",
                self.input_mean.len(),
                self.input_std.len()
            )));
        }
        if let Some(k) = self
            .input_std
            .iter()
            .position(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(MlpError::BadNormalisation(format!(
                "standard deviation {} of input {k} is not a positive finite number",
                self.input_std[k]
            )));
        }
        Ok(())
    }
}

/// Checks that `data` holds `rows x width` floats.
fn check_length(
    what: &'static str,
    data: &[f32],
    rows: usize,
    width: usize,
) -> Result<(), MlpError> {
    let expected = rows.saturating_mul(width);
    if data.len() == expected {
        Ok(())
    } else {
        Err(MlpError::BadLength {
            what,
            expected,
            rows,
            width,
            got: data.len(),
        })
    }
}

// ---------------------------------------------------------------------------
// GEMM: C = A B (+ bias, activation), the one kernel every pass runs.
//
// Each output C(i, j) is one register lane that starts at 0 and adds
// A(i, p) * B(p, j) for p = 0, 1, ..., depth - 1 in that order, a multiply
// then an add (no FMA); the bias and activation come after. So C(i, j)
// depends only on row i of A and column j of B, never on how rows are split
// into blocks or threads, nor on the SIMD width the CPU has: the same bits
// everywhere. Depth is not blocked (a packed panel of B is depth x 32
// floats, 32 KB at depth 256, in L1 or L2), which keeps that order trivial.
// ---------------------------------------------------------------------------

/// An `rows x depth` matrix read through strides, so that transposed
/// operands (`W^T`, `delta^T`) need no copy: A(i, p) is
/// `data[i * row_stride + p * depth_stride]`.
#[derive(Debug, Clone, Copy)]
struct Strided<'a> {
    data: &'a [f32],
    rows: usize,
    depth: usize,
    row_stride: usize,
    depth_stride: usize,
}

impl Strided<'_> {
    #[inline(always)]
    fn at(&self, row: usize, p: usize) -> f32 {
        self.data[row * self.row_stride + p * self.depth_stride]
    }
}

/// The register tile of a SIMD build: `MR` rows of A by `NR` columns of B
/// held in `MR x NR / lanes` vector registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kernel {
    simd: philox::Simd,
}

impl Kernel {
    fn detect() -> Kernel {
        Kernel {
            simd: philox::simd(),
        }
    }

    /// Columns per packed panel of B: two registers' worth under AVX-512,
    /// two under AVX2, four SSE registers otherwise.
    fn nr(self) -> usize {
        match self.simd {
            philox::Simd::Avx512 => 32,
            _ => 16,
        }
    }
}

/// B (`depth x cols`) packed for [`Kernel`]: panel q holds columns
/// `q * nr .. q * nr + nr` as `depth` rows of `nr` contiguous floats, zero
/// past `cols`, so the inner loop reads one panel front to back.
#[derive(Debug)]
struct Packed {
    data: Vec<f32>,
    depth: usize,
    cols: usize,
    nr: usize,
}

impl Packed {
    /// Packs B(p, j) = `data[p * p_stride + j * col_stride]`.
    fn pack(kernel: Kernel, source: Strided<'_>) -> Packed {
        let mut packed = Packed::empty();
        packed.repack(kernel, source);
        packed
    }

    /// Nothing packed yet: a buffer for [`Packed::repack`].
    fn empty() -> Packed {
        Packed {
            data: Vec::new(),
            depth: 0,
            cols: 0,
            nr: 0,
        }
    }

    /// Packs `source` into this buffer, reusing its memory: training packs
    /// every weight matrix on every step, and fresh buffers of that size
    /// cost more in page faults than the copy itself.
    fn repack(&mut self, kernel: Kernel, source: Strided<'_>) {
        // `source` is read as `cols x depth` (rows are B's columns).
        let (cols, depth, nr) = (source.rows, source.depth, kernel.nr());
        let panels = cols.div_ceil(nr);
        reuse_for_overwrite(&mut self.data, panels * depth * nr);
        for (q, panel) in self.data.chunks_exact_mut(depth * nr).enumerate() {
            let valid = cols.saturating_sub(q * nr).min(nr);
            if source.depth_stride == 1 {
                // Each column is contiguous in `source`: read it front to
                // back, write it down the panel (which stays in L1).
                for j in 0..valid {
                    let start = (q * nr + j) * source.row_stride;
                    let column = &source.data[start..start + depth];
                    for (row, value) in panel.chunks_exact_mut(nr).zip(column) {
                        row[j] = *value;
                    }
                }
            } else if source.row_stride == 1 {
                // Each row of B is contiguous: copy its panel's stretch.
                for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                    let start = p * source.depth_stride + q * nr;
                    row[..valid].copy_from_slice(&source.data[start..start + valid]);
                }
            } else {
                for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                    for (j, slot) in row.iter_mut().enumerate().take(valid) {
                        *slot = source.at(q * nr + j, p);
                    }
                }
            }
            if valid < nr {
                for row in panel.chunks_exact_mut(nr) {
                    row[valid..].fill(0.0);
                }
            }
        }
        self.depth = depth;
        self.cols = cols;
        self.nr = nr;
    }

    fn panel<const NR: usize>(&self, q: usize) -> &[[f32; NR]] {
        let start = q * self.depth * NR;
        self.data[start..start + self.depth * NR]
            .as_chunks::<NR>()
            .0
    }
}

/// Gives `buffer` exactly `len` elements, keeping its memory: the contents
/// are left as they were (stale), for callers that overwrite every element.
fn reuse_for_overwrite(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() != len {
        buffer.resize(len, 0.0);
    }
}

/// What happens to `C(i, j)` after its sum: bias added, then the hidden
/// activation, then (backpropagation) the activation's derivative.
#[derive(Debug, Clone, Copy)]
struct Epilogue<'a> {
    bias: Option<&'a [f32]>,
    activation: Option<Activation>,
    derivative: Option<Derivative<'a>>,
}

/// `C(i, j) *= activation'(z)`, read from `activated(i, j) = activation(z)`
/// (row-major, C's shape): backpropagation through a hidden layer, applied
/// as each delta leaves the GEMM instead of in a second pass over it.
#[derive(Debug, Clone, Copy)]
struct Derivative<'a> {
    activation: Activation,
    activated: &'a [f32],
}

impl Epilogue<'_> {
    const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        activation: None,
        derivative: None,
    };

    /// `row` and `col` index C as a whole (not the block being computed).
    #[inline(always)]
    fn apply(&self, sum: f32, row: usize, col: usize, cols: usize) -> f32 {
        let value = match self.bias {
            Some(bias) => sum + bias[col],
            None => sum,
        };
        let value = match self.activation {
            None => value,
            Some(activation) => activate(activation, value),
        };
        match self.derivative {
            None => value,
            Some(derivative) => scale_by_derivative(
                derivative.activation,
                value,
                derivative.activated[row * cols + col],
            ),
        }
    }
}

#[inline(always)]
fn activate(activation: Activation, value: f32) -> f32 {
    match activation {
        // Written as a comparison (not `max`) so that NaN propagates.
        Activation::Relu => {
            if value < 0.0 {
                0.0
            } else {
                value
            }
        }
        Activation::Tanh => value.tanh(),
    }
}

/// Rows `rows` of `C = A B` into `out` (`rows.len() x b.cols`, row-major).
fn gemm_rows(
    kernel: Kernel,
    a: Strided<'_>,
    rows: Range<usize>,
    b: &Packed,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
) {
    debug_assert_eq!(b.nr, kernel.nr());
    debug_assert_eq!(a.depth, b.depth);
    debug_assert_eq!(out.len(), rows.len() * b.cols);
    // The scratch is taken here, outside the SIMD builds: a closure passed
    // to `LocalKey::with` is compiled without their target features. Nothing
    // below reaches rayon or another GEMM, so the borrow is never taken twice.
    PACKED_A.with_borrow_mut(|scratch| match kernel.simd {
        // SAFETY: `kernel.simd` comes from `philox::simd`, so the CPU has
        // the features these builds enable.
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        philox::Simd::Avx512 => unsafe { gemm_rows_avx512(a, rows, b, epilogue, out, scratch) },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        philox::Simd::Avx2 => unsafe { gemm_rows_avx2(a, rows, b, epilogue, out, scratch) },
        _ => gemm_rows_tiled::<3, 16>(a, rows, b, epilogue, out, scratch),
    });
}

thread_local! {
    /// Each thread's packed rows of A, kept from one GEMM to the next so
    /// that the many small GEMMs of training do not map fresh memory.
    static PACKED_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// [`gemm_rows`] for AVX-512: 8 x 32 tile, 16 accumulator registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512dq,avx512bw")]
fn gemm_rows_avx512(
    a: Strided<'_>,
    rows: Range<usize>,
    b: &Packed,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    gemm_rows_tiled::<8, 32>(a, rows, b, epilogue, out, scratch);
}

/// [`gemm_rows`] for AVX2: 6 x 16 tile, 12 accumulator registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gemm_rows_avx2(
    a: Strided<'_>,
    rows: Range<usize>,
    b: &Packed,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    gemm_rows_tiled::<6, 16>(a, rows, b, epilogue, out, scratch);
}

/// The GEMM of one build; `scratch` holds the packed rows of A.
#[inline(always)]
fn gemm_rows_tiled<const MR: usize, const NR: usize>(
    a: Strided<'_>,
    rows: Range<usize>,
    b: &Packed,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let depth = a.depth;
    let packed_a = pack_a::<MR>(a, rows.clone(), scratch);
    let groups = rows.len().div_ceil(MR);
    // Panel outer, row group inner: one panel of B stays in L1 while the
    // row block's packed A (a few tens of KB) streams from L2.
    for q in 0..b.cols.div_ceil(NR) {
        let panel = b.panel::<NR>(q);
        let cols = (b.cols - q * NR).min(NR);
        for g in 0..groups {
            let acc = micro_tile::<MR, NR>(&packed_a[g * depth..(g + 1) * depth], panel);
            let valid_rows = (rows.len() - g * MR).min(MR);
            for (r, acc_row) in acc.iter().enumerate().take(valid_rows) {
                let start = (g * MR + r) * b.cols + q * NR;
                let row = rows.start + g * MR + r;
                for (j, (slot, sum)) in out[start..start + cols].iter_mut().zip(acc_row).enumerate()
                {
                    *slot = epilogue.apply(*sum, row, q * NR + j, b.cols);
                }
            }
        }
    }
}

/// Rows `rows` of A as groups of `MR` rows, each `depth` steps of `MR`
/// floats (zero past the last row), the order the micro tile reads them,
/// written into `scratch`.
#[inline(always)]
fn pack_a<'s, const MR: usize>(
    a: Strided<'_>,
    rows: Range<usize>,
    scratch: &'s mut Vec<f32>,
) -> &'s [[f32; MR]] {
    let groups = rows.len().div_ceil(MR);
    reuse_for_overwrite(scratch, groups * a.depth * MR);
    let packed = scratch.as_chunks_mut::<MR>().0;
    for (g, group) in packed
        .chunks_exact_mut(a.depth.max(1))
        .enumerate()
        .take(groups)
    {
        let first = rows.start + g * MR;
        let valid = (rows.end - first).min(MR);
        for (p, step) in group.iter_mut().enumerate() {
            if a.row_stride == 1 && valid == MR {
                // The group's rows are adjacent floats (a transposed
                // operand): one copy per step.
                let start = first + p * a.depth_stride;
                step.copy_from_slice(&a.data[start..start + MR]);
            } else {
                for (r, slot) in step.iter_mut().enumerate() {
                    *slot = if r < valid { a.at(first + r, p) } else { 0.0 };
                }
            }
        }
    }
    packed
}

/// The `MR x NR` sums of one row group against one panel: the innermost
/// loop. Each row's accumulator is its own local array of `NR` floats (one
/// or two vector registers): LLVM keeps such small arrays in registers and
/// turns `row_step` into lane-wise multiplies and adds, where one `MR x NR`
/// array would stay in memory.
#[inline(always)]
fn micro_tile<const MR: usize, const NR: usize>(
    a: &[[f32; MR]],
    b: &[[f32; NR]],
) -> [[f32; NR]; MR] {
    // Up to 8 rows, unrolled by hand; `MR` picks how many are live.
    macro_rules! tile {
        ($($acc:ident $r:literal),*) => {{
            $(let mut $acc = [0.0f32; NR];)*
            for (a_step, b_step) in a.iter().zip(b) {
                $(if $r < MR { $acc = row_step($acc, a_step[$r], b_step); })*
            }
            let rows = [$($acc),*];
            std::array::from_fn(|r| rows[r])
        }};
    }
    const { assert!(MR <= 8) };
    tile!(acc0 0, acc1 1, acc2 2, acc3 3, acc4 4, acc5 5, acc6 6, acc7 7)
}

/// `acc + scale * b`, lane by lane (a multiply, then an add: no FMA).
#[inline(always)]
fn row_step<const NR: usize>(mut acc: [f32; NR], scale: f32, b: &[f32; NR]) -> [f32; NR] {
    for j in 0..NR {
        acc[j] += scale * b[j];
    }
    acc
}

/// `C = A B` with rows split into fixed blocks of `block_rows` across the
/// rayon pool (the split does not change any bit of C).
fn par_gemm(
    kernel: Kernel,
    a: Strided<'_>,
    b: &Packed,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    block_rows: usize,
) {
    out.par_chunks_mut(block_rows * b.cols)
        .enumerate()
        .for_each(|(block, chunk)| {
            let first = block * block_rows;
            let rows = first..first + chunk.len() / b.cols;
            gemm_rows(kernel, a, rows, b, epilogue, chunk);
        });
}

/// A layer's `W^T` (`inputs x outputs`) packed as the B of `x W^T`.
fn pack_weights_transposed(kernel: Kernel, layer: &Layer) -> Packed {
    Packed::pack(kernel, weights_transposed(layer))
}

/// A layer's `W^T` as a B operand: B(p = input, j = output) =
/// `W[output * inputs + input]`.
fn weights_transposed(layer: &Layer) -> Strided<'_> {
    Strided {
        data: &layer.weight,
        rows: layer.outputs,
        depth: layer.inputs,
        row_stride: layer.inputs,
        depth_stride: 1,
    }
}

/// A row-major `rows x width` matrix as an A operand.
fn row_major(data: &[f32], rows: usize, width: usize) -> Strided<'_> {
    Strided {
        data,
        rows,
        depth: width,
        row_stride: width,
        depth_stride: 1,
    }
}

// ---------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------

/// Batch rows per rayon task in [`forward_cpu`]: the block's activations
/// (256 x 256 floats per layer) stay in L2 from one layer to the next.
const FORWARD_BLOCK_ROWS: usize = 256;

/// Rows per rayon task in the training GEMMs (mini-batches of a few
/// hundred rows still split across the cores).
const TRAIN_BLOCK_ROWS: usize = 64;

/// `(x - mean) / std`, row by row, into `out`.
fn normalise_into(mlp: &Mlp, inputs: &[f32], out: &mut [f32]) {
    let width = mlp.inputs();
    for (row_in, row_out) in inputs.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        for k in 0..width {
            row_out[k] = (row_in[k] - mlp.input_mean[k]) / mlp.input_std[k];
        }
    }
}

/// The network's outputs (`batch x outputs`, row-major) for `inputs`
/// (`batch x inputs`, row-major): normalisation, then `y = x W^T + b` per
/// layer with the activation between hidden layers. Blocks of batch rows
/// run in parallel and go through every layer while their activations are
/// in cache; the bits do not depend on the thread count or the batch split.
pub fn forward_cpu(mlp: &Mlp, inputs: &[f32], batch: usize) -> Result<Vec<f32>, MlpError> {
    mlp.check()?;
    check_length("inputs", inputs, batch, mlp.inputs())?;
    let kernel = Kernel::detect();
    let packed: Vec<Packed> = mlp
        .layers
        .iter()
        .map(|layer| pack_weights_transposed(kernel, layer))
        .collect();
    let mut outputs = vec![0.0; batch * mlp.outputs()];
    outputs
        .par_chunks_mut(FORWARD_BLOCK_ROWS * mlp.outputs())
        .zip(inputs.par_chunks(FORWARD_BLOCK_ROWS * mlp.inputs()))
        .for_each(|(out, block)| forward_block(kernel, mlp, &packed, block, out));
    Ok(outputs)
}

/// One block of rows through the whole network.
fn forward_block(kernel: Kernel, mlp: &Mlp, packed: &[Packed], inputs: &[f32], out: &mut [f32]) {
    let rows = inputs.len() / mlp.inputs();
    let mut current = vec![0.0; inputs.len()];
    normalise_into(mlp, inputs, &mut current);
    let last = mlp.layers.len() - 1;
    for (index, (layer, b)) in mlp.layers.iter().zip(packed).enumerate() {
        let epilogue = Epilogue {
            bias: Some(&layer.bias),
            activation: (index < last).then_some(mlp.activation),
            derivative: None,
        };
        let a = row_major(&current, rows, layer.inputs);
        if index == last {
            gemm_rows(kernel, a, 0..rows, b, epilogue, out);
            return;
        }
        let mut next = vec![0.0; rows * layer.outputs];
        gemm_rows(kernel, a, 0..rows, b, epilogue, &mut next);
        current = next;
    }
}

/// Mean squared error of the network on `samples` rows of `x` against `y`
/// (`samples x outputs`): the mean over samples and outputs, summed in f64
/// in a fixed order.
pub fn loss_cpu(mlp: &Mlp, x: &[f32], y: &[f32], samples: usize) -> Result<f64, MlpError> {
    mlp.check()?;
    check_length("targets", y, samples, mlp.outputs())?;
    if samples == 0 {
        return Err(MlpError::BadTraining("no samples".into()));
    }
    let predictions = forward_cpu(mlp, x, samples)?;
    let block = FORWARD_BLOCK_ROWS * mlp.outputs();
    // Per-block sums, then the blocks in order: the same sum whatever the
    // thread count.
    let partial: Vec<f64> = predictions
        .par_chunks(block)
        .zip(y.par_chunks(block))
        .map(|(p, t)| squared_error(p, t))
        .collect();
    Ok(partial.iter().sum::<f64>() / (samples * mlp.outputs()) as f64)
}

fn squared_error(predictions: &[f32], targets: &[f32]) -> f64 {
    predictions
        .iter()
        .zip(targets)
        .map(|(p, t)| {
            let d = f64::from(*p) - f64::from(*t);
            d * d
        })
        .sum()
}

// ---------------------------------------------------------------------------
// Training.
// ---------------------------------------------------------------------------

/// How the weights move along the gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// `v = momentum v + g; p -= lr v` (PyTorch's convention).
    Sgd { lr: f32, momentum: f32 },
    /// Kingma and Ba: `m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    /// p -= lr (m c1) / (sqrt(v c2) + eps)` with `c1 = 1 / (1 - b1^t)`,
    /// `c2 = 1 / (1 - b2^t)` computed in f64 and rounded to f32.
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
    },
}

impl Optimizer {
    /// Adam with the usual betas and epsilon.
    pub fn adam(lr: f32) -> Optimizer {
        Optimizer::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    fn check(&self) -> Result<(), MlpError> {
        let (name, values): (&str, &[f32]) = match self {
            Optimizer::Sgd { lr, momentum } => ("SGD", &[*lr, *momentum]),
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => ("Adam", &[*lr, *beta1, *beta2, *eps]),
        };
        if values.iter().all(|v| v.is_finite() && *v >= 0.0) {
            Ok(())
        } else {
            Err(MlpError::BadTraining(format!(
                "{name} parameters must be finite and non-negative: {self:?}"
            )))
        }
    }
}

/// A training run: `epochs` passes over the samples in a seeded shuffled
/// order, in mini-batches of `batch_size` (the last one may be smaller).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: Optimizer,
    pub seed: u64,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Per epoch, the mean squared error over its mini-batches, each taken
    /// before its update (the running training loss, weighted by batch size).
    pub losses: Vec<f64>,
    /// Optimizer steps taken (mini-batches).
    pub steps: u64,
}

/// One f32 vector per layer weight and bias, shaped like the network's
/// parameters: gradients, and the optimizer's moments.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub weight: Vec<Vec<f32>>,
    pub bias: Vec<Vec<f32>>,
}

impl Params {
    /// Zeros shaped like `mlp`'s parameters.
    pub fn zeros(mlp: &Mlp) -> Params {
        Params {
            weight: mlp
                .layers
                .iter()
                .map(|l| vec![0.0; l.weight.len()])
                .collect(),
            bias: mlp.layers.iter().map(|l| vec![0.0; l.bias.len()]).collect(),
        }
    }

    fn shaped_like(&self, mlp: &Mlp) -> bool {
        self.weight.len() == mlp.layers.len()
            && self.bias.len() == mlp.layers.len()
            && mlp.layers.iter().enumerate().all(|(i, l)| {
                self.weight[i].len() == l.weight.len() && self.bias[i].len() == l.bias.len()
            })
    }
}

/// The optimizer's memory between steps: momentum (SGD), or first and
/// second moments (Adam), and the step count.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    /// Steps taken so far; Adam's bias corrections use `step + 1`.
    pub step: u64,
    /// SGD's velocity, or Adam's first moment.
    pub first: Params,
    /// Adam's second moment (zeros, unused, under SGD).
    pub second: Params,
}

impl OptimizerState {
    pub fn new(mlp: &Mlp) -> OptimizerState {
        OptimizerState {
            step: 0,
            first: Params::zeros(mlp),
            second: Params::zeros(mlp),
        }
    }
}

/// The order of the samples in epoch `epoch` of a run seeded `seed`: a
/// Fisher-Yates shuffle driven by splitmix64 (the GPU path shuffles on the
/// host with this same function).
pub fn epoch_order(samples: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut state = seed
        ^ (epoch as u64)
            .wrapping_add(1)
            .wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut order: Vec<usize> = (0..samples).collect();
    for i in (1..samples).rev() {
        // Multiply-shift maps 64 random bits onto 0..=i (bias below 2^-40).
        let j = ((u128::from(splitmix64(&mut state)) * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

/// Trains `mlp` in place on `samples` rows of `x` (`samples x inputs`)
/// against `y` (`samples x outputs`) with the mean squared error.
pub fn train_cpu(
    mlp: &mut Mlp,
    x: &[f32],
    y: &[f32],
    samples: usize,
    config: &TrainConfig,
) -> Result<TrainReport, MlpError> {
    check_training(mlp, x, y, samples)?;
    config.optimizer.check()?;
    if config.batch_size == 0 {
        return Err(MlpError::BadTraining("batch size 0".into()));
    }
    let mut state = OptimizerState::new(mlp);
    let mut workspace = Workspace::new(mlp);
    let mut losses = Vec::with_capacity(config.epochs);
    for epoch in 0..config.epochs {
        let order = epoch_order(samples, config.seed, epoch);
        let mut weighted = 0.0;
        for indices in order.chunks(config.batch_size) {
            let loss = step_in(
                mlp,
                &mut state,
                &mut workspace,
                x,
                y,
                samples,
                indices,
                &config.optimizer,
            )?;
            weighted += loss * indices.len() as f64;
        }
        losses.push(weighted / samples as f64);
    }
    Ok(TrainReport {
        losses,
        steps: state.step,
    })
}

fn check_training(mlp: &Mlp, x: &[f32], y: &[f32], samples: usize) -> Result<(), MlpError> {
    mlp.check()?;
    check_length("inputs", x, samples, mlp.inputs())?;
    check_length("targets", y, samples, mlp.outputs())?;
    if samples == 0 {
        return Err(MlpError::BadTraining("no samples".into()));
    }
    Ok(())
}

/// One optimizer step on the mini-batch `indices` (rows of `x` and `y`, in
/// that order): forward, backward, update. Returns the batch's mean squared
/// error before the update.
pub fn train_step(
    mlp: &mut Mlp,
    state: &mut OptimizerState,
    x: &[f32],
    y: &[f32],
    samples: usize,
    indices: &[usize],
    optimizer: &Optimizer,
) -> Result<f64, MlpError> {
    let mut workspace = Workspace::new(mlp);
    step_in(
        mlp,
        state,
        &mut workspace,
        x,
        y,
        samples,
        indices,
        optimizer,
    )
}

/// [`train_step`] with the run's buffers.
#[allow(clippy::too_many_arguments)]
fn step_in(
    mlp: &mut Mlp,
    state: &mut OptimizerState,
    workspace: &mut Workspace,
    x: &[f32],
    y: &[f32],
    samples: usize,
    indices: &[usize],
    optimizer: &Optimizer,
) -> Result<f64, MlpError> {
    optimizer.check()?;
    if !(state.first.shaped_like(mlp) && state.second.shaped_like(mlp)) {
        return Err(MlpError::BadTraining(
            "the optimizer state is not shaped like the network".into(),
        ));
    }
    let loss = gradients_in(mlp, workspace, x, y, samples, indices)?;
    state.step += 1;
    apply_update(mlp, state, &workspace.gradients, optimizer);
    Ok(loss)
}

/// The mean squared error of the mini-batch `indices` and its gradient with
/// respect to every weight and bias (the inputs' normalisation is fixed).
/// Every sum over the batch runs in the order of `indices`.
pub fn gradients_cpu(
    mlp: &Mlp,
    x: &[f32],
    y: &[f32],
    samples: usize,
    indices: &[usize],
) -> Result<(f64, Params), MlpError> {
    let mut workspace = Workspace::new(mlp);
    let loss = gradients_in(mlp, &mut workspace, x, y, samples, indices)?;
    Ok((loss, workspace.gradients))
}

/// [`gradients_cpu`] into `workspace.gradients`; returns the loss.
fn gradients_in(
    mlp: &Mlp,
    workspace: &mut Workspace,
    x: &[f32],
    y: &[f32],
    samples: usize,
    indices: &[usize],
) -> Result<f64, MlpError> {
    check_training(mlp, x, y, samples)?;
    if indices.is_empty() {
        return Err(MlpError::BadTraining("empty mini-batch".into()));
    }
    if let Some(bad) = indices.iter().find(|&&i| i >= samples) {
        return Err(MlpError::BadTraining(format!(
            "mini-batch index {bad} out of range for {samples} samples"
        )));
    }
    if !workspace.gradients.shaped_like(mlp) {
        *workspace = Workspace::new(mlp);
    }
    let kernel = Kernel::detect();
    forward_batch(kernel, mlp, x, indices, workspace);
    let loss = output_delta(mlp, workspace, y, indices);
    backward(kernel, mlp, workspace, indices.len());
    Ok(loss)
}

/// The buffers of one training step, kept from step to step: a run maps
/// them once, where fresh buffers on every mini-batch spent more time in
/// page faults than in arithmetic. Every buffer is overwritten before it is
/// read, so a step's results do not depend on what the last step left.
#[derive(Debug)]
struct Workspace {
    /// Entry 0: the mini-batch's normalised inputs; entry l + 1: layer l's
    /// output (`batch x outputs`, row-major), kept for the backward pass.
    activations: Vec<Vec<f32>>,
    /// The loss's gradient at the output of the layer being
    /// back-propagated (`batch x outputs`), and at its input.
    delta: Vec<f32>,
    delta_next: Vec<f32>,
    /// The step's gradient, shaped like the network's parameters.
    gradients: Params,
    /// Per layer, `W^T` packed as the B of the forward GEMM.
    forward_weights: Vec<Packed>,
    /// The B operands of the backward pass: a layer's input activations
    /// transposed (for `dW`) and its weights (for the next delta).
    packed_activations: Packed,
    packed_weights: Packed,
}

impl Workspace {
    fn new(mlp: &Mlp) -> Workspace {
        Workspace {
            activations: vec![Vec::new(); mlp.layers.len() + 1],
            delta: Vec::new(),
            delta_next: Vec::new(),
            gradients: Params::zeros(mlp),
            forward_weights: mlp.layers.iter().map(|_| Packed::empty()).collect(),
            packed_activations: Packed::empty(),
            packed_weights: Packed::empty(),
        }
    }
}

/// Fills `workspace.activations` for the rows `indices`: entry 0 is the
/// normalised inputs, entry l + 1 the output of layer l.
fn forward_batch(
    kernel: Kernel,
    mlp: &Mlp,
    x: &[f32],
    indices: &[usize],
    workspace: &mut Workspace,
) {
    let width = mlp.inputs();
    let batch = indices.len();
    let inputs = &mut workspace.activations[0];
    reuse_for_overwrite(inputs, batch * width);
    for (row_out, &i) in inputs.chunks_exact_mut(width).zip(indices) {
        normalise_into(mlp, &x[i * width..(i + 1) * width], row_out);
    }
    let last = mlp.layers.len() - 1;
    for (index, layer) in mlp.layers.iter().enumerate() {
        let b = &mut workspace.forward_weights[index];
        b.repack(kernel, weights_transposed(layer));
        let epilogue = Epilogue {
            bias: Some(&layer.bias),
            activation: (index < last).then_some(mlp.activation),
            derivative: None,
        };
        let (done, rest) = workspace.activations.split_at_mut(index + 1);
        let out = &mut rest[0];
        reuse_for_overwrite(out, batch * layer.outputs);
        let a = row_major(&done[index], batch, layer.inputs);
        par_gemm(kernel, a, b, epilogue, out, TRAIN_BLOCK_ROWS);
    }
}

/// The batch loss; `workspace.delta` becomes `dL/d output = 2 (output - y)
/// / (batch outputs)`.
fn output_delta(mlp: &Mlp, workspace: &mut Workspace, y: &[f32], indices: &[usize]) -> f64 {
    let outputs = mlp.outputs();
    let predicted = &workspace.activations[mlp.layers.len()];
    let count = indices.len() * outputs;
    let scale = 2.0 / count as f32;
    let delta = &mut workspace.delta;
    reuse_for_overwrite(delta, count);
    let mut sum = 0.0;
    for (row, &i) in indices.iter().enumerate() {
        let target = &y[i * outputs..(i + 1) * outputs];
        for o in 0..outputs {
            let difference = predicted[row * outputs + o] - target[o];
            sum += f64::from(difference) * f64::from(difference);
            delta[row * outputs + o] = scale * difference;
        }
    }
    sum / count as f64
}

/// Backpropagation from `workspace.delta` (the loss's gradient at the
/// output) into `workspace.gradients`.
fn backward(kernel: Kernel, mlp: &Mlp, workspace: &mut Workspace, batch: usize) {
    let Workspace {
        activations,
        delta,
        delta_next,
        gradients,
        packed_activations,
        packed_weights,
        ..
    } = workspace;
    for (index, layer) in mlp.layers.iter().enumerate().rev() {
        let (inputs, outputs) = (layer.inputs, layer.outputs);
        let previous = &activations[index];
        // dW (outputs x inputs) = delta^T (outputs x batch) . previous
        // (batch x inputs): the sum over the batch is the GEMM's depth.
        packed_activations.repack(
            kernel,
            Strided {
                data: previous,
                rows: inputs,
                depth: batch,
                row_stride: 1,
                depth_stride: inputs,
            },
        );
        let delta_t = Strided {
            data: delta,
            rows: outputs,
            depth: batch,
            row_stride: 1,
            depth_stride: outputs,
        };
        par_gemm(
            kernel,
            delta_t,
            packed_activations,
            Epilogue::NONE,
            &mut gradients.weight[index],
            TRAIN_BLOCK_ROWS,
        );
        let bias = &mut gradients.bias[index];
        bias.fill(0.0);
        for row in delta.chunks_exact(outputs) {
            for (sum, d) in bias.iter_mut().zip(row) {
                *sum += d;
            }
        }
        if index == 0 {
            break;
        }
        // delta_prev (batch x inputs) = delta (batch x outputs) . W, times
        // the activation's derivative, read from the activation itself.
        packed_weights.repack(
            kernel,
            Strided {
                data: &layer.weight,
                rows: inputs,
                depth: outputs,
                row_stride: 1,
                depth_stride: inputs,
            },
        );
        let epilogue = Epilogue {
            derivative: Some(Derivative {
                activation: mlp.activation,
                activated: previous,
            }),
            ..Epilogue::NONE
        };
        reuse_for_overwrite(delta_next, batch * inputs);
        par_gemm(
            kernel,
            row_major(delta, batch, outputs),
            packed_weights,
            epilogue,
            delta_next,
            TRAIN_BLOCK_ROWS,
        );
        std::mem::swap(delta, delta_next);
    }
}

/// `delta * activation'(z)`, written in terms of `a = activation(z)`.
#[inline(always)]
fn scale_by_derivative(activation: Activation, delta: f32, activated: f32) -> f32 {
    match activation {
        Activation::Relu => {
            if activated > 0.0 {
                delta
            } else {
                0.0
            }
        }
        Activation::Tanh => delta * (1.0 - activated * activated),
    }
}

/// Parameters per piece of the optimizer's update.
const UPDATE_CHUNK: usize = 8192;

/// Below this many parameters in all, the update runs on the calling thread:
/// waking the pool costs more than it saves.
const PARALLEL_UPDATE_MIN: usize = 32_768;

/// The optimizer's update of every parameter (element-wise, so any split
/// gives the same bits); `state.step` is already the new step's number. All
/// layers' weights and biases go to the pool as one list of pieces, one
/// parallel region per step rather than one per array.
fn apply_update(
    mlp: &mut Mlp,
    state: &mut OptimizerState,
    gradients: &Params,
    optimizer: &Optimizer,
) {
    let rule = UpdateRule::new(optimizer, state.step);
    let OptimizerState { first, second, .. } = state;
    let params = mlp
        .layers
        .iter_mut()
        .flat_map(|l| [&mut l.weight[..], &mut l.bias[..]]);
    let firsts = pairs_mut(&mut first.weight, &mut first.bias);
    let seconds = pairs_mut(&mut second.weight, &mut second.bias);
    let grads = gradients
        .weight
        .iter()
        .zip(&gradients.bias)
        .flat_map(|(w, b)| [&w[..], &b[..]]);
    let mut total = 0;
    let pieces: Vec<UpdatePiece<'_>> = params
        .zip(firsts)
        .zip(seconds)
        .zip(grads)
        .flat_map(|(((params, first), second), gradient)| {
            total += params.len();
            params
                .chunks_mut(UPDATE_CHUNK)
                .zip(first.chunks_mut(UPDATE_CHUNK))
                .zip(second.chunks_mut(UPDATE_CHUNK))
                .zip(gradient.chunks(UPDATE_CHUNK))
                .map(|(((params, first), second), gradient)| UpdatePiece {
                    params,
                    first,
                    second,
                    gradient,
                })
        })
        .collect();
    let apply = |piece: UpdatePiece<'_>| {
        rule.apply_chunk(piece.params, piece.first, piece.second, piece.gradient)
    };
    if total < PARALLEL_UPDATE_MIN {
        pieces.into_iter().for_each(apply);
    } else {
        pieces.into_par_iter().for_each(apply);
    }
}

/// Up to [`UPDATE_CHUNK`] parameters and their optimizer state and
/// gradient, the same stretch of each array.
struct UpdatePiece<'a> {
    params: &'a mut [f32],
    first: &'a mut [f32],
    second: &'a mut [f32],
    gradient: &'a [f32],
}

/// Per layer, its weight then its bias array of `weight` and `bias`.
fn pairs_mut<'a>(
    weight: &'a mut [Vec<f32>],
    bias: &'a mut [Vec<f32>],
) -> impl Iterator<Item = &'a mut [f32]> {
    weight
        .iter_mut()
        .zip(bias.iter_mut())
        .flat_map(|(w, b)| [&mut w[..], &mut b[..]])
}

/// One step's update with its constants worked out.
#[derive(Debug, Clone, Copy)]
enum UpdateRule {
    Sgd {
        lr: f32,
        momentum: f32,
    },
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        correction1: f32,
        correction2: f32,
    },
}

impl UpdateRule {
    fn new(optimizer: &Optimizer, step: u64) -> UpdateRule {
        match *optimizer {
            Optimizer::Sgd { lr, momentum } => UpdateRule::Sgd { lr, momentum },
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                let t = i32::try_from(step).unwrap_or(i32::MAX);
                UpdateRule::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    correction1: (1.0 / (1.0 - f64::from(beta1).powi(t))) as f32,
                    correction2: (1.0 / (1.0 - f64::from(beta2).powi(t))) as f32,
                }
            }
        }
    }

    #[inline]
    fn apply_chunk(
        self,
        params: &mut [f32],
        first: &mut [f32],
        second: &mut [f32],
        gradient: &[f32],
    ) {
        let lanes = params
            .iter_mut()
            .zip(first.iter_mut())
            .zip(second.iter_mut())
            .zip(gradient);
        match self {
            UpdateRule::Sgd { lr, momentum } => {
                for (((p, m), _), g) in lanes {
                    *m = momentum * *m + g;
                    *p -= lr * *m;
                }
            }
            UpdateRule::Adam {
                lr,
                beta1,
                beta2,
                eps,
                correction1,
                correction2,
            } => {
                for (((p, m), v), g) in lanes {
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * (g * g);
                    *p -= lr * (*m * correction1) / ((*v * correction2).sqrt() + eps);
                }
            }
        }
    }
}

/// splitmix64 (Steele, Lea and Flood): the seeded stream behind the
/// shuffles and the random weights.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The top 24 bits as a float in [0, 1).
fn unit_f32(bits: u64) -> f32 {
    (bits >> 40) as f32 * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network with seeded weights, biases and a normalisation that is
    /// not the identity, so every term of the forward pass matters.
    fn fixture(sizes: &[usize], activation: Activation, seed: u64) -> Mlp {
        let mut mlp = Mlp::random(sizes, activation, seed).expect("valid sizes");
        let mut state = seed ^ 0xABCD;
        for layer in &mut mlp.layers {
            for b in &mut layer.bias {
                *b = 0.2 * (unit_f32(splitmix64(&mut state)) - 0.5);
            }
        }
        for k in 0..mlp.inputs() {
            mlp.input_mean[k] = unit_f32(splitmix64(&mut state)) - 0.5;
            mlp.input_std[k] = 0.5 + unit_f32(splitmix64(&mut state));
        }
        mlp
    }

    fn uniform(count: usize, low: f32, high: f32, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..count)
            .map(|_| low + (high - low) * unit_f32(splitmix64(&mut state)))
            .collect()
    }

    /// The network in f64 with plain loops, parameters given as f64.
    fn reference_forward(
        mlp: &Mlp,
        weights: &[Vec<f64>],
        biases: &[Vec<f64>],
        row: &[f32],
    ) -> Vec<f64> {
        let mut current: Vec<f64> = row
            .iter()
            .enumerate()
            .map(|(k, v)| {
                (f64::from(*v) - f64::from(mlp.input_mean[k])) / f64::from(mlp.input_std[k])
            })
            .collect();
        let last = mlp.layers.len() - 1;
        for (index, layer) in mlp.layers.iter().enumerate() {
            current = (0..layer.outputs)
                .map(|o| {
                    let mut sum = biases[index][o];
                    for k in 0..layer.inputs {
                        sum += weights[index][o * layer.inputs + k] * current[k];
                    }
                    match (index < last, mlp.activation) {
                        (false, _) => sum,
                        (true, Activation::Relu) => sum.max(0.0),
                        (true, Activation::Tanh) => sum.tanh(),
                    }
                })
                .collect();
        }
        current
    }

    fn parameters_f64(mlp: &Mlp) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let widen = |v: &Vec<f32>| v.iter().map(|x| f64::from(*x)).collect();
        (
            mlp.layers.iter().map(|l| widen(&l.weight)).collect(),
            mlp.layers.iter().map(|l| widen(&l.bias)).collect(),
        )
    }

    #[test]
    fn forward_matches_f64_reference() {
        let cases: &[(&[usize], Activation, usize)] = &[
            (&[3, 5, 2], Activation::Relu, 1),
            (&[8, 16, 16, 2], Activation::Tanh, 37),
            (&[64, 256, 256, 1], Activation::Relu, 300),
            (&[10, 33, 7], Activation::Tanh, 257),
        ];
        for (seed, &(sizes, activation, batch)) in cases.iter().enumerate() {
            let mlp = fixture(sizes, activation, seed as u64);
            let inputs = uniform(batch * sizes[0], -2.0, 2.0, 100 + seed as u64);
            let got = forward_cpu(&mlp, &inputs, batch).expect("forward");
            let (weights, biases) = parameters_f64(&mlp);
            for (row, chunk) in inputs.chunks_exact(sizes[0]).enumerate() {
                let expect = reference_forward(&mlp, &weights, &biases, chunk);
                for (o, e) in expect.iter().enumerate() {
                    let g = f64::from(got[row * mlp.outputs() + o]);
                    assert!(
                        (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                        "{sizes:?} row {row} output {o}: {g} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn normalisation_is_applied() {
        // One identity layer: the output is the normalised input.
        let mlp = Mlp {
            layers: vec![Layer {
                inputs: 2,
                outputs: 2,
                weight: vec![1.0, 0.0, 0.0, 1.0],
                bias: vec![0.0, 0.5],
            }],
            activation: Activation::Relu,
            input_mean: vec![1.0, 2.0],
            input_std: vec![2.0, 4.0],
        };
        let out = forward_cpu(&mlp, &[3.0, 10.0, -1.0, 2.0], 2).expect("forward");
        assert_eq!(out, vec![1.0, 2.5, -1.0, 0.5]);
    }

    /// Every SIMD build computes the same bits as the portable one.
    #[test]
    fn simd_builds_agree_with_portable() {
        let (rows, depth, cols) = (45, 70, 75);
        let a = uniform(rows * depth, -1.0, 1.0, 1);
        let b = uniform(cols * depth, -1.0, 1.0, 2);
        let bias = uniform(cols, -1.0, 1.0, 3);
        let run = |simd| {
            let kernel = Kernel { simd };
            let packed = Packed::pack(kernel, row_major(&b, cols, depth));
            let epilogue = Epilogue {
                bias: Some(&bias),
                activation: Some(Activation::Tanh),
                derivative: None,
            };
            let mut out = vec![0.0; rows * cols];
            gemm_rows(
                kernel,
                row_major(&a, rows, depth),
                0..rows,
                &packed,
                epilogue,
                &mut out,
            );
            out
        };
        let portable = run(philox::Simd::Portable);
        assert_eq!(run(Kernel::detect().simd), portable);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert_eq!(run(philox::Simd::Avx2), portable);
        }
    }

    /// Central differences of the f64 reference loss against the f32
    /// gradients, on every parameter of a tiny network.
    #[test]
    fn gradients_match_finite_differences() {
        for activation in [Activation::Relu, Activation::Tanh] {
            let mlp = fixture(&[3, 5, 4, 2], activation, 7);
            let samples = 9;
            let x = uniform(samples * 3, -1.5, 1.5, 8);
            let y = uniform(samples * 2, -1.0, 1.0, 9);
            let indices = [4, 0, 8, 2, 2, 7];
            let (loss, gradients) = gradients_cpu(&mlp, &x, &y, samples, &indices).expect("grads");
            let (weights, biases) = parameters_f64(&mlp);
            let reference_loss = |weights: &[Vec<f64>], biases: &[Vec<f64>]| {
                let mut sum = 0.0;
                for &i in &indices {
                    let out = reference_forward(&mlp, weights, biases, &x[i * 3..i * 3 + 3]);
                    for (o, p) in out.iter().enumerate() {
                        sum += (p - f64::from(y[i * 2 + o])).powi(2);
                    }
                }
                sum / (indices.len() * 2) as f64
            };
            let base = reference_loss(&weights, &biases);
            assert!(
                (loss - base).abs() <= 1e-6 * base.max(1.0),
                "{loss} vs {base}"
            );
            let h = 1e-6;
            let mut largest = 0.0f64;
            let mut worst = 0.0f64;
            for layer in 0..mlp.layers.len() {
                for (is_bias, count) in [(false, weights[layer].len()), (true, biases[layer].len())]
                {
                    for e in 0..count {
                        let shifted = |delta: f64| {
                            let (mut w, mut b) = (weights.clone(), biases.clone());
                            let target = if is_bias {
                                &mut b[layer][e]
                            } else {
                                &mut w[layer][e]
                            };
                            *target += delta;
                            reference_loss(&w, &b)
                        };
                        let numeric = (shifted(h) - shifted(-h)) / (2.0 * h);
                        let analytic = f64::from(if is_bias {
                            gradients.bias[layer][e]
                        } else {
                            gradients.weight[layer][e]
                        });
                        largest = largest.max(numeric.abs());
                        worst = worst.max((numeric - analytic).abs());
                    }
                }
            }
            assert!(largest > 1e-3, "{activation:?}: gradients vanish");
            assert!(
                worst <= 1e-4 * largest,
                "{activation:?}: error {worst} of {largest}"
            );
        }
    }

    /// y = sin(x1) + 0.5 x2^2 + noise over x in [-2, 2]^2.
    fn regression_set(samples: usize) -> (Vec<f32>, Vec<f32>) {
        let x = uniform(samples * 2, -2.0, 2.0, 11);
        let noise = uniform(samples, -0.05, 0.05, 12);
        let y = x
            .chunks_exact(2)
            .zip(&noise)
            .map(|(row, n)| row[0].sin() + 0.5 * row[1] * row[1] + n)
            .collect();
        (x, y)
    }

    #[test]
    fn training_lowers_the_loss() {
        let samples = 2048;
        let (x, y) = regression_set(samples);
        let optimizers = [
            (Optimizer::adam(0.01), Activation::Tanh),
            (
                Optimizer::Sgd {
                    lr: 0.05,
                    momentum: 0.9,
                },
                Activation::Relu,
            ),
        ];
        for (optimizer, activation) in optimizers {
            let mut mlp = Mlp::random(&[2, 32, 32, 1], activation, 3).expect("sizes");
            let before = loss_cpu(&mlp, &x, &y, samples).expect("loss");
            let config = TrainConfig {
                epochs: 30,
                batch_size: 64,
                optimizer,
                seed: 5,
            };
            let report = train_cpu(&mut mlp, &x, &y, samples, &config).expect("train");
            let after = loss_cpu(&mlp, &x, &y, samples).expect("loss");
            assert_eq!(report.steps, 30 * 32);
            assert_eq!(report.losses.len(), 30);
            assert!(
                report.losses[29] < report.losses[0],
                "{optimizer:?}: {:?}",
                report.losses
            );
            assert!(after < before / 20.0, "{optimizer:?}: {before} -> {after}");
        }
    }

    fn on_threads<T: Send>(threads: usize, run: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool")
            .install(run)
    }

    #[test]
    fn same_bits_on_one_and_four_threads() {
        let mlp = fixture(&[64, 256, 256, 1], Activation::Relu, 21);
        let batch = 700;
        let inputs = uniform(batch * 64, -2.0, 2.0, 22);
        let one = on_threads(1, || forward_cpu(&mlp, &inputs, batch)).expect("forward");
        let four = on_threads(4, || forward_cpu(&mlp, &inputs, batch)).expect("forward");
        assert_eq!(one, four);

        let samples = 600;
        let (x, y) = regression_set(samples);
        let train = || {
            let mut net = fixture(&[2, 64, 64, 1], Activation::Tanh, 23);
            let config = TrainConfig {
                epochs: 2,
                batch_size: 200,
                optimizer: Optimizer::adam(0.01),
                seed: 24,
            };
            let report = train_cpu(&mut net, &x, &y, samples, &config).expect("train");
            (net, report)
        };
        assert_eq!(on_threads(1, train), on_threads(4, train));
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let order = epoch_order(1000, 1, 0);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(order, (0..1000).collect::<Vec<_>>());
        assert_eq!(order, epoch_order(1000, 1, 0));
        assert_ne!(order, epoch_order(1000, 1, 1));
        assert_ne!(order, epoch_order(1000, 2, 0));
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mlp = fixture(&[3, 4, 2], Activation::Relu, 1);
        let err = forward_cpu(&mlp, &[0.0; 7], 2).expect_err("short inputs");
        assert_eq!(
            err,
            MlpError::BadLength {
                what: "inputs",
                expected: 6,
                rows: 2,
                width: 3,
                got: 7
            }
        );
        assert!(err.to_string().contains("expected 6 floats"), "{err}");

        let mut broken = mlp.clone();
        broken.layers[1].inputs = 5;
        broken.layers[1].weight = vec![0.0; 10];
        assert!(matches!(
            forward_cpu(&broken, &[0.0; 3], 1),
            Err(MlpError::BadLayer { layer: 1, .. })
        ));
        let mut broken = mlp.clone();
        broken.layers[0].bias.pop();
        assert!(matches!(
            broken.check(),
            Err(MlpError::BadLayer { layer: 0, .. })
        ));
        let mut broken = mlp.clone();
        broken.input_std[2] = 0.0;
        assert!(matches!(broken.check(), Err(MlpError::BadNormalisation(_))));
        let empty = Mlp {
            layers: vec![],
            ..mlp.clone()
        };
        assert_eq!(forward_cpu(&empty, &[], 0), Err(MlpError::NoLayers));

        let (x, y) = (vec![0.0; 12], vec![0.0; 8]);
        let mut net = mlp.clone();
        let config = TrainConfig {
            epochs: 1,
            batch_size: 2,
            optimizer: Optimizer::adam(0.01),
            seed: 1,
        };
        assert!(matches!(
            train_cpu(&mut net, &x, &y[..7], 4, &config),
            Err(MlpError::BadLength {
                what: "targets",
                ..
            })
        ));
        let zero_batch = TrainConfig {
            batch_size: 0,
            ..config
        };
        assert!(matches!(
            train_cpu(&mut net, &x, &y, 4, &zero_batch),
            Err(MlpError::BadTraining(_))
        ));
        let bad_lr = TrainConfig {
            optimizer: Optimizer::adam(f32::NAN),
            ..config
        };
        assert!(matches!(
            train_cpu(&mut net, &x, &y, 4, &bad_lr),
            Err(MlpError::BadTraining(_))
        ));
        let mut state = OptimizerState::new(&net);
        let out_of_range = train_step(&mut net, &mut state, &x, &y, 4, &[0, 4], &config.optimizer);
        assert!(matches!(out_of_range, Err(MlpError::BadTraining(m)) if m.contains("index 4")));
        let other = OptimizerState::new(&fixture(&[3, 5, 2], Activation::Relu, 1));
        let mut other = other;
        assert!(train_step(&mut net, &mut other, &x, &y, 4, &[0], &config.optimizer).is_err());
        assert_eq!(net, mlp, "failed calls leave the network as it was");
    }
}
