//! Training on the GPU as plans, like the forward (`plan.rs`): a forward
//! that keeps every activation the backward needs, one slot per layer, and
//! the backward from the loss gradient `dout` to the flat gradient `grad`
//! (laid out like the parameters). The unit tests run both plans on the
//! host with the reference GEMM and compare the gradient with the CPU
//! twin's ([`crate::transformer::gradients_cpu`]), which checks every
//! transpose, leading dimension and stride of the backward's GEMMs.
//!
//! Row-major through column-major cuBLAS, as in `plan.rs`. For a linear
//! layer `Y = X W^T` (`X` rows x inputs, `W` outputs x inputs, `dY` rows x
//! outputs): the weight gradient `dW += dY^T X` is, column-major, `dW^T =
//! X^T dY` with `X`'s buffer as it is and `dY`'s read transposed; the
//! input gradient `dX = dY W` is `dX^T = W^T dY^T`, both buffers as they
//! are. In attention, per (window, head): `dV = P^T dO`, `dP = dO V^T`,
//! the softmax backwards to `dS`, `dQ = dS K`, `dK = dS^T Q`.

use super::plan::{BlockViews, ForwardViews, GemmOp, Op, View, forward_ops, from, params, work};
use crate::transformer::{Config, Offsets, Pooling, Positions};

/// The training workspace: name and what it holds per window of the
/// batch (`layers` slots for the per-layer activations).
pub(super) const TRAIN_WORKSPACE: [&str; 24] = [
    "raw",        // window x features: the inputs
    "normalised", // window x features
    "streams",    // (layers + 1) x window x d_model: each block's input, then the final one
    "mids",       // layers x window x d_model: the stream after attention
    "normed1",    // layers x window x d_model: LayerNorm 1's output
    "qkv",        // layers x window x 3 d_model
    "probs",      // layers x heads x window x window: the attention weights
    "attended",   // layers x window x d_model
    "normed2",    // layers x window x d_model: LayerNorm 2's output
    "pre_gelu",   // layers x window x ff: the hidden layer before GELU
    "hidden",     // layers x window x ff: after GELU
    "final",      // window x d_model: the final LayerNorm's output
    "pooled",     // d_model
    "out",        // outputs
    "stats",      // window x 2: one LayerNorm's row statistics (scratch)
    "dout",       // outputs: the loss gradient, from the host
    "dpooled",    // d_model
    "dstream",    // window x d_model: the residual stream's gradient
    "dnormed",    // window x d_model
    "dhidden",    // window x ff
    "dattended",  // window x d_model
    "dqkv",       // window x 3 d_model
    "dscores",    // heads x window x window
    "grad",       // the parameters' count, not per window: the gradient
];

pub(super) const T_RAW: usize = 0;
const T_NORMALISED: usize = 1;
const T_STREAMS: usize = 2;
const T_MIDS: usize = 3;
const T_NORMED1: usize = 4;
const T_QKV: usize = 5;
const T_PROBS: usize = 6;
const T_ATTENDED: usize = 7;
const T_NORMED2: usize = 8;
const T_PRE_GELU: usize = 9;
const T_HIDDEN: usize = 10;
const T_FINAL: usize = 11;
const T_POOLED: usize = 12;
pub(super) const T_OUT: usize = 13;
const T_STATS: usize = 14;
pub(super) const T_DOUT: usize = 15;
const T_DPOOLED: usize = 16;
const T_DSTREAM: usize = 17;
const T_DNORMED: usize = 18;
const T_DHIDDEN: usize = 19;
const T_DATTENDED: usize = 20;
const T_DQKV: usize = 21;
const T_DSCORES: usize = 22;
pub(super) const T_GRAD: usize = 23;

/// Floats per window of each training buffer (the gradient's entry is 0:
/// see [`train_fixed`]), in [`TRAIN_WORKSPACE`] order.
pub(super) fn train_per_window(config: &Config) -> [usize; 24] {
    let (t, f, d, ff, l) = (
        config.window,
        config.features,
        config.d_model,
        config.ff,
        config.layers,
    );
    let scores = config.heads * t * t;
    [
        t * f,
        t * f,
        (l + 1) * t * d,
        l * t * d,
        l * t * d,
        l * 3 * t * d,
        l * scores,
        l * t * d,
        l * t * d,
        l * t * ff,
        l * t * ff,
        t * d,
        d,
        config.outputs,
        2 * t,
        config.outputs,
        d,
        t * d,
        t * d,
        t * ff,
        t * d,
        3 * t * d,
        scores,
        0,
    ]
}

/// Floats of each training buffer that do not grow with the batch: the
/// gradient's, as many as the parameters.
pub(super) fn train_fixed(config: &Config) -> [usize; 24] {
    let mut fixed = [0; 24];
    fixed[T_GRAD] = config.parameter_count();
    fixed
}

/// `dW += dY^T X`, row-major: `dY` rows x outputs in `dy`, `X` rows x
/// inputs in `x`, `dW` outputs x inputs in the gradient at `weight`.
fn weight_grad(dy: View, x: View, weight: usize, rows: usize, inputs: usize, outputs: usize) -> Op {
    Op::Gemm(GemmOp {
        transpose_a: false,
        transpose_b: true,
        m: inputs,
        n: outputs,
        k: rows,
        alpha: 1.0,
        beta: 1.0,
        lda: inputs,
        ldb: outputs,
        ldc: inputs,
        batch: 1,
        stride_a: 0,
        stride_b: 0,
        stride_c: 0,
        a: View {
            len: rows * inputs,
            ..x
        },
        b: View {
            len: rows * outputs,
            ..dy
        },
        c: work(T_GRAD, weight, outputs * inputs),
    })
}

/// `dX = dY W` (`dX +=` when `accumulate`), row-major: `W` outputs x
/// inputs in the parameters at `weight`.
fn input_grad(
    dy: View,
    weight: usize,
    dx: View,
    rows: usize,
    inputs: usize,
    outputs: usize,
    accumulate: bool,
) -> Op {
    Op::Gemm(GemmOp {
        transpose_a: false,
        transpose_b: false,
        m: inputs,
        n: rows,
        k: outputs,
        alpha: 1.0,
        beta: if accumulate { 1.0 } else { 0.0 },
        lda: inputs,
        ldb: outputs,
        ldc: inputs,
        batch: 1,
        stride_a: 0,
        stride_b: 0,
        stride_c: 0,
        a: params(weight, outputs * inputs),
        b: View {
            len: rows * outputs,
            ..dy
        },
        c: View {
            len: rows * inputs,
            ..dx
        },
    })
}

/// A bias's gradient: the column sums of `dy` (rows x cols) added to the
/// gradient at `bias`.
fn bias_grad(dy: View, bias: usize, rows: usize, cols: usize) -> Op {
    Op::ColumnSums {
        rows,
        cols,
        m: View {
            len: rows * cols,
            ..dy
        },
        sums: work(T_GRAD, bias, cols),
    }
}

/// The views of one plan over `windows` windows.
struct Slots {
    windows: usize,
    per: [usize; 24],
}

impl Slots {
    /// The whole of buffer `index` for this batch (every layer's slot).
    fn whole(&self, index: usize) -> View {
        work(index, 0, self.windows * self.per[index])
    }

    /// Layer `layer`'s slot of a per-layer buffer of `layers` slots.
    fn layer(&self, index: usize, layer: usize, layers: usize) -> View {
        let len = self.windows * self.per[index] / layers;
        work(index, layer * len, len)
    }
}

/// The training workspace's views for `windows` windows: every block's
/// activations in its own slot, the stream before each residual add and
/// the pre-GELU hidden layer kept (the backward reads them).
pub(super) fn training_views(config: &Config, windows: usize) -> ForwardViews {
    let layers = config.layers;
    let s = Slots {
        windows,
        per: train_per_window(config),
    };
    let stream = |l: usize| s.layer(T_STREAMS, l, layers + 1);
    ForwardViews {
        raw: s.whole(T_RAW),
        normalised: s.whole(T_NORMALISED),
        embedded: stream(0),
        blocks: (0..layers)
            .map(|l| BlockViews {
                input: stream(l),
                normed1: s.layer(T_NORMED1, l, layers),
                qkv: s.layer(T_QKV, l, layers),
                probs: s.layer(T_PROBS, l, layers),
                attended: s.layer(T_ATTENDED, l, layers),
                mid: s.layer(T_MIDS, l, layers),
                normed2: s.layer(T_NORMED2, l, layers),
                pre_gelu: s.layer(T_PRE_GELU, l, layers),
                hidden: s.layer(T_HIDDEN, l, layers),
                output: stream(l + 1),
            })
            .collect(),
        final_normed: s.whole(T_FINAL),
        pooled: s.whole(T_POOLED),
        out: s.whole(T_OUT),
    }
}

/// The forward pass of `windows` windows for training: the outputs in
/// `out`, and every activation the backward needs kept. The same op
/// sequence as the inference plan ([`forward_ops`]), over the training
/// workspace's views.
pub(super) fn train_forward_plan(config: &Config, offsets: &Offsets, windows: usize) -> Vec<Op> {
    forward_ops(config, offsets, windows, &training_views(config, windows))
}

/// LayerNorm backwards: its input `x`'s row statistics, `dx` from `dy`
/// (added when `accumulate`), the gain's and the bias's gradients.
#[allow(clippy::too_many_arguments)]
fn layer_norm_back(
    ops: &mut Vec<Op>,
    rows: usize,
    width: usize,
    x: View,
    dy: View,
    dx: View,
    (gain, bias): (usize, usize),
    accumulate: bool,
) {
    let stats = work(T_STATS, 0, 2 * rows);
    ops.push(Op::LnStats {
        rows,
        width,
        x,
        stats,
    });
    ops.push(Op::LnBack {
        rows,
        width,
        accumulate,
        dy,
        x,
        stats,
        gain: params(gain, width),
        dx,
    });
    ops.push(Op::LnGainGrad {
        rows,
        width,
        dy,
        x,
        stats,
        dgain: work(T_GRAD, gain, width),
    });
    ops.push(bias_grad(dy, bias, rows, width));
}

/// The backward pass of `windows` windows after [`train_forward_plan`]:
/// from the loss gradient in `dout` (`windows x outputs`, what the host
/// computed from `out`), the parameters' gradient added to `grad`.
pub(super) fn backward_plan(config: &Config, offsets: &Offsets, windows: usize) -> Vec<Op> {
    let (t, f, d, ff, o) = (
        config.window,
        config.features,
        config.d_model,
        config.ff,
        config.outputs,
    );
    let (heads, dh, layers) = (config.heads, config.head_dim(), config.layers);
    let rows = windows * t;
    let s = Slots {
        windows,
        per: train_per_window(config),
    };
    let stream = |l: usize| s.layer(T_STREAMS, l, layers + 1);
    let (dout, dpooled) = (s.whole(T_DOUT), s.whole(T_DPOOLED));
    let (dstream, dnormed) = (s.whole(T_DSTREAM), s.whole(T_DNORMED));
    let (dhidden, dattended) = (s.whole(T_DHIDDEN), s.whole(T_DATTENDED));
    let (dqkv, dscores) = (s.whole(T_DQKV), s.whole(T_DSCORES));
    let mut ops = vec![
        weight_grad(dout, s.whole(T_POOLED), offsets.head_w, windows, d, o),
        bias_grad(dout, offsets.head_b, windows, o),
        input_grad(dout, offsets.head_w, dpooled, windows, d, o, false),
        Op::PoolBack {
            n: rows * d,
            steps: t,
            width: d,
            mean: config.pooling == Pooling::Mean,
            dpooled,
            dz: dnormed,
        },
    ];
    layer_norm_back(
        &mut ops,
        rows,
        d,
        stream(layers),
        dnormed,
        dstream,
        (offsets.final_w, offsets.final_b),
        false,
    );
    let scale = 1.0 / (dh as f32).sqrt();
    for (l, b) in offsets.blocks.iter().enumerate().rev() {
        let (normed1, qkv) = (s.layer(T_NORMED1, l, layers), s.layer(T_QKV, l, layers));
        let (probs, attended) = (s.layer(T_PROBS, l, layers), s.layer(T_ATTENDED, l, layers));
        let (mid, normed2) = (s.layer(T_MIDS, l, layers), s.layer(T_NORMED2, l, layers));
        let (pre, hidden) = (s.layer(T_PRE_GELU, l, layers), s.layer(T_HIDDEN, l, layers));
        // Feed-forward.
        ops.push(weight_grad(dstream, hidden, b.ff2_w, rows, ff, d));
        ops.push(bias_grad(dstream, b.ff2_b, rows, d));
        ops.push(input_grad(dstream, b.ff2_w, dhidden, rows, ff, d, false));
        ops.push(Op::GeluBack {
            n: rows * ff,
            u: pre,
            du: dhidden,
        });
        ops.push(weight_grad(dhidden, normed2, b.ff1_w, rows, d, ff));
        ops.push(bias_grad(dhidden, b.ff1_b, rows, ff));
        ops.push(input_grad(dhidden, b.ff1_w, dnormed, rows, d, ff, false));
        layer_norm_back(
            &mut ops,
            rows,
            d,
            mid,
            dnormed,
            dstream,
            (b.norm2_w, b.norm2_b),
            true,
        );
        // Attention's output projection.
        ops.push(weight_grad(dstream, attended, b.out_w, rows, d, d));
        ops.push(bias_grad(dstream, b.out_b, rows, d));
        ops.push(input_grad(dstream, b.out_w, dattended, rows, d, d, false));
        for head in 0..heads {
            // dV^T = dO^T P: dO^T is dattended's head columns as stored,
            // P (row-major) read transposed.
            ops.push(Op::Gemm(GemmOp {
                transpose_a: false,
                transpose_b: true,
                m: dh,
                n: t,
                k: t,
                alpha: 1.0,
                beta: 0.0,
                lda: d,
                ldb: t,
                ldc: 3 * d,
                batch: windows,
                stride_a: t * d,
                stride_b: heads * t * t,
                stride_c: t * 3 * d,
                a: from(dattended, head * dh),
                b: from(probs, head * t * t),
                c: from(dqkv, 2 * d + head * dh),
            }));
            // dP^T = V dO^T: V's storage read transposed, dO^T as stored.
            ops.push(Op::Gemm(GemmOp {
                transpose_a: true,
                transpose_b: false,
                m: t,
                n: t,
                k: dh,
                alpha: 1.0,
                beta: 0.0,
                lda: 3 * d,
                ldb: d,
                ldc: t,
                batch: windows,
                stride_a: t * 3 * d,
                stride_b: t * d,
                stride_c: heads * t * t,
                a: from(qkv, 2 * d + head * dh),
                b: from(dattended, head * dh),
                c: from(dscores, head * t * t),
            }));
        }
        ops.push(Op::SoftmaxBack {
            rows: windows * heads * t,
            width: t,
            scale,
            probs,
            d: dscores,
        });
        for head in 0..heads {
            // dQ^T = K^T dS^T: both as stored.
            ops.push(Op::Gemm(GemmOp {
                transpose_a: false,
                transpose_b: false,
                m: dh,
                n: t,
                k: t,
                alpha: 1.0,
                beta: 0.0,
                lda: 3 * d,
                ldb: t,
                ldc: 3 * d,
                batch: windows,
                stride_a: t * 3 * d,
                stride_b: heads * t * t,
                stride_c: t * 3 * d,
                a: from(qkv, d + head * dh),
                b: from(dscores, head * t * t),
                c: from(dqkv, head * dh),
            }));
            // dK^T = Q^T dS: Q^T as stored, dS^T's storage read transposed.
            ops.push(Op::Gemm(GemmOp {
                transpose_a: false,
                transpose_b: true,
                m: dh,
                n: t,
                k: t,
                alpha: 1.0,
                beta: 0.0,
                lda: 3 * d,
                ldb: t,
                ldc: 3 * d,
                batch: windows,
                stride_a: t * 3 * d,
                stride_b: heads * t * t,
                stride_c: t * 3 * d,
                a: from(qkv, head * dh),
                b: from(dscores, head * t * t),
                c: from(dqkv, d + head * dh),
            }));
        }
        ops.push(weight_grad(dqkv, normed1, b.in_w, rows, d, 3 * d));
        ops.push(bias_grad(dqkv, b.in_b, rows, 3 * d));
        ops.push(input_grad(dqkv, b.in_w, dnormed, rows, d, 3 * d, false));
        layer_norm_back(
            &mut ops,
            rows,
            d,
            stream(l),
            dnormed,
            dstream,
            (b.norm1_w, b.norm1_b),
            true,
        );
    }
    // The input projection and the positions.
    ops.push(weight_grad(
        dstream,
        s.whole(T_NORMALISED),
        offsets.embed_w,
        rows,
        f,
        d,
    ));
    ops.push(bias_grad(dstream, offsets.embed_b, rows, d));
    if let (Some(at), Positions::Learned) = (offsets.position, config.positions) {
        // Each window's rows are one row of t x d_model.
        ops.push(Op::ColumnSums {
            rows: windows,
            cols: t * d,
            m: dstream,
            sums: work(T_GRAD, at, t * d),
        });
    }
    ops
}
