//! The forward pass as a list of operations on named buffers, built on the
//! host: every GEMM's shape, leading dimensions and batch strides, every
//! kernel's extent. The device executes the list (`device.rs`); the unit
//! tests execute the same list with a reference GEMM and reference kernels
//! on the host and compare it with the CPU twin, which checks every offset,
//! leading dimension and stride without a GPU.
//!
//! Row-major data through column-major cuBLAS: a row-major `r x c` matrix
//! is the column-major `c x r` matrix, its transpose. So `Y = X W^T` (`X`
//! rows x inputs, `W` outputs x inputs) is the column-major `Y^T = W X^T`:
//! `W`'s buffer read transposed (`lda = inputs`), `X`'s as it is
//! (`ldb = inputs`), `ldc = outputs`. One head's `Q`, `K`, `V` are
//! `window x head_dim` blocks of the `qkv` rows (`3 d_model` wide), so
//! their leading dimension is `3 d_model`.

use crate::transformer::{Config, Offsets, Pooling, Positions};

/// Where a view points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Buf {
    /// The flat parameters (read only).
    Params,
    /// The sinusoidal table, `window x d_model` (read only; only with
    /// sinusoidal positions).
    Positions,
    /// A workspace buffer, by its index in [`WORKSPACE`].
    Work(usize),
}

/// The workspace buffers: name and floats per window of the batch.
pub(super) const WORKSPACE: [&str; 10] = [
    "raw",        // window x features: the inputs as they arrive
    "normalised", // window x features
    "stream",     // window x d_model: the residual stream
    "normed",     // window x d_model: a LayerNorm's output
    "qkv",        // window x 3 d_model: the projections
    "scores",     // heads x window x window: the attention weights
    "attended",   // window x d_model: the heads' contexts side by side
    "hidden",     // window x ff: the feed-forward hidden layer
    "pooled",     // d_model
    "out",        // outputs
];

pub(super) const RAW: usize = 0;
pub(super) const NORMALISED: usize = 1;
pub(super) const STREAM: usize = 2;
pub(super) const NORMED: usize = 3;
pub(super) const QKV: usize = 4;
pub(super) const SCORES: usize = 5;
pub(super) const ATTENDED: usize = 6;
pub(super) const HIDDEN: usize = 7;
pub(super) const POOLED: usize = 8;
pub(super) const OUT: usize = 9;

/// Floats per window of each workspace buffer, in [`WORKSPACE`] order.
pub(super) fn per_window(config: &Config) -> [usize; 10] {
    let (t, f, d) = (config.window, config.features, config.d_model);
    [
        t * f,
        t * f,
        t * d,
        t * d,
        3 * t * d,
        config.heads * t * t,
        t * d,
        t * config.ff,
        d,
        config.outputs,
    ]
}

/// Floats of the sinusoidal table the device keeps (0 with learned
/// positions, which are parameters).
pub(super) fn table_floats(config: &Config) -> usize {
    match config.positions {
        Positions::Learned => 0,
        Positions::Sinusoidal => config.window * config.d_model,
    }
}

/// A stretch of a buffer: `len` floats from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct View {
    pub(super) buf: Buf,
    pub(super) offset: usize,
    pub(super) len: usize,
}

/// A column-major (strided-batched when `batch > 1`) GEMM
/// `C_i = alpha op(A_i) op(B_i) + beta C_i`, `A_i` at `a.offset + i
/// stride_a`, and so on.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct GemmOp {
    pub(super) transpose_a: bool,
    pub(super) transpose_b: bool,
    /// C is m x n; op(A) m x k; op(B) k x n.
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) alpha: f32,
    pub(super) beta: f32,
    pub(super) lda: usize,
    pub(super) ldb: usize,
    pub(super) ldc: usize,
    pub(super) batch: usize,
    pub(super) stride_a: usize,
    pub(super) stride_b: usize,
    pub(super) stride_c: usize,
    pub(super) a: View,
    pub(super) b: View,
    pub(super) c: View,
}

impl GemmOp {
    /// Rows and columns of A, B and C as stored (column-major).
    fn stored(&self) -> [(usize, usize); 3] {
        let a = if self.transpose_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let b = if self.transpose_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        [a, b, (self.m, self.n)]
    }
}

/// One step of the forward pass.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Op {
    Gemm(GemmOp),
    /// `out = (x - mean) / std` per feature.
    Normalize {
        n: usize,
        features: usize,
        x: View,
        mean: View,
        std: View,
        out: View,
    },
    /// `y = (y + bias) + positions[row % period]`.
    BiasPositions {
        n: usize,
        cols: usize,
        period: usize,
        bias: View,
        positions: View,
        y: View,
    },
    /// `y += bias`.
    BiasAdd {
        n: usize,
        cols: usize,
        bias: View,
        y: View,
    },
    /// `y = gelu(y + bias)`.
    BiasGelu {
        n: usize,
        cols: usize,
        bias: View,
        y: View,
    },
    LayerNorm {
        rows: usize,
        width: usize,
        x: View,
        gain: View,
        bias: View,
        out: View,
    },
    /// Scaled, masked softmax of each row, in place.
    Softmax {
        rows: usize,
        width: usize,
        causal: bool,
        scale: f32,
        scores: View,
    },
    Pool {
        n: usize,
        steps: usize,
        width: usize,
        mean: bool,
        z: View,
        pooled: View,
    },
    /// `dst = src` (the forward for training keeps the residual stream
    /// before each add).
    Copy {
        src: View,
        dst: View,
    },
    /// `g = gelu(u)`, the pre-activation `u` kept apart.
    Gelu {
        n: usize,
        u: View,
        g: View,
    },
    /// `du *= gelu'(u)`.
    GeluBack {
        n: usize,
        u: View,
        du: View,
    },
    /// Each row's mean and reciprocal standard deviation, as `LayerNorm`.
    LnStats {
        rows: usize,
        width: usize,
        x: View,
        stats: View,
    },
    /// LayerNorm backwards to its input `x` (`dx +=` when `accumulate`).
    LnBack {
        rows: usize,
        width: usize,
        accumulate: bool,
        dy: View,
        x: View,
        stats: View,
        gain: View,
        dx: View,
    },
    /// `dgain += column sums of dy xhat`.
    LnGainGrad {
        rows: usize,
        width: usize,
        dy: View,
        x: View,
        stats: View,
        dgain: View,
    },
    /// `sums += column sums of m` (`rows x cols`).
    ColumnSums {
        rows: usize,
        cols: usize,
        m: View,
        sums: View,
    },
    /// The scaled, masked softmax backwards, in place on `d`.
    SoftmaxBack {
        rows: usize,
        width: usize,
        scale: f32,
        probs: View,
        d: View,
    },
    /// The pooling backwards, `dz` (`n = windows x steps x width`) from
    /// `dpooled`.
    PoolBack {
        n: usize,
        steps: usize,
        width: usize,
        mean: bool,
        dpooled: View,
        dz: View,
    },
}

impl Op {
    /// The view the operation writes.
    pub(super) fn output(&self) -> View {
        match self {
            Op::Gemm(g) => g.c,
            Op::Normalize { out, .. } | Op::LayerNorm { out, .. } => *out,
            Op::BiasPositions { y, .. } | Op::BiasAdd { y, .. } | Op::BiasGelu { y, .. } => *y,
            Op::Softmax { scores, .. } => *scores,
            Op::Pool { pooled, .. } => *pooled,
            Op::Copy { dst, .. } => *dst,
            Op::Gelu { g, .. } => *g,
            Op::GeluBack { du, .. } => *du,
            Op::LnStats { stats, .. } => *stats,
            Op::LnBack { dx, .. } => *dx,
            Op::LnGainGrad { dgain, .. } => *dgain,
            Op::ColumnSums { sums, .. } => *sums,
            Op::SoftmaxBack { d, .. } => *d,
            Op::PoolBack { dz, .. } => *dz,
        }
    }

    /// The views the operation reads (besides its output, which the
    /// in-place ones read too).
    pub(super) fn inputs(&self) -> Vec<View> {
        match self {
            Op::Gemm(g) => vec![g.a, g.b],
            Op::Normalize { x, mean, std, .. } => vec![*x, *mean, *std],
            Op::BiasPositions {
                bias, positions, ..
            } => vec![*bias, *positions],
            Op::BiasAdd { bias, .. } | Op::BiasGelu { bias, .. } => vec![*bias],
            Op::LayerNorm { x, gain, bias, .. } => vec![*x, *gain, *bias],
            Op::Softmax { .. } => vec![],
            Op::Pool { z, .. } => vec![*z],
            Op::Copy { src, .. } => vec![*src],
            Op::Gelu { u, .. } | Op::GeluBack { u, .. } => vec![*u],
            Op::LnStats { x, .. } => vec![*x],
            Op::LnBack {
                dy, x, stats, gain, ..
            } => vec![*dy, *x, *stats, *gain],
            Op::LnGainGrad { dy, x, stats, .. } => vec![*dy, *x, *stats],
            Op::ColumnSums { m, .. } => vec![*m],
            Op::SoftmaxBack { probs, .. } => vec![*probs],
            Op::PoolBack { dpooled, .. } => vec![*dpooled],
        }
    }

    /// Checks every access the operation makes lies in its views, every
    /// view in its buffer (`lengths(buf)` floats), and that it writes a
    /// workspace buffer none of its inputs is in: what must hold before
    /// the device runs it.
    pub(super) fn check(&self, lengths: &dyn Fn(Buf) -> usize) -> Result<(), String> {
        let out = self.output();
        if !matches!(out.buf, Buf::Work(_)) {
            return Err(format!("{self:?} writes a read-only buffer"));
        }
        for view in self.inputs().iter().chain([&out]) {
            if view.offset + view.len > lengths(view.buf) {
                return Err(format!(
                    "{view:?} runs past its buffer ({} floats)",
                    lengths(view.buf)
                ));
            }
        }
        if self.inputs().iter().any(|v| v.buf == out.buf) {
            return Err(format!("{self:?} reads the buffer it writes"));
        }
        let need = |what: &str, view: &View, len: usize| {
            if len <= view.len {
                Ok(())
            } else {
                Err(format!(
                    "{what} needs {len} floats, its view has {}",
                    view.len
                ))
            }
        };
        match self {
            Op::Gemm(g) => {
                if [g.m, g.n, g.k, g.batch].contains(&0) {
                    return Err(format!("{g:?} has an empty dimension"));
                }
                let [a, b, c] = g.stored();
                let parts = [
                    ("A", a, g.lda, g.stride_a, &g.a),
                    ("B", b, g.ldb, g.stride_b, &g.b),
                    ("C", c, g.ldc, g.stride_c, &g.c),
                ];
                for (name, (rows, cols), ld, stride, view) in parts {
                    if ld < rows {
                        return Err(format!("GEMM {name}: leading dimension {ld} < rows {rows}"));
                    }
                    need(name, view, (g.batch - 1) * stride + ld * (cols - 1) + rows)?;
                }
                let largest = [g.m, g.n, g.k, g.lda, g.ldb, g.ldc, g.batch];
                if largest.iter().any(|v| i32::try_from(*v).is_err()) {
                    return Err(format!("{g:?}: a dimension exceeds cuBLAS's i32"));
                }
                Ok(())
            }
            Op::Normalize {
                n,
                features,
                x,
                mean,
                std,
                out,
            } => {
                need("x", x, *n)?;
                need("out", out, *n)?;
                need("mean", mean, *features)?;
                need("std", std, *features)
            }
            Op::BiasPositions {
                n,
                cols,
                period,
                bias,
                positions,
                y,
            } => {
                need("y", y, *n)?;
                need("bias", bias, *cols)?;
                need("positions", positions, period * cols)
            }
            Op::BiasAdd { n, cols, bias, y } | Op::BiasGelu { n, cols, bias, y } => {
                need("y", y, *n)?;
                need("bias", bias, *cols)
            }
            Op::LayerNorm {
                rows,
                width,
                x,
                gain,
                bias,
                out,
            } => {
                need("x", x, rows * width)?;
                need("out", out, rows * width)?;
                need("gain", gain, *width)?;
                need("bias", bias, *width)
            }
            Op::Softmax {
                rows,
                width,
                scores,
                ..
            } => need("scores", scores, rows * width),
            Op::Pool {
                n,
                steps,
                width,
                z,
                pooled,
                ..
            } => {
                need("z", z, (n / width) * steps * width)?;
                need("pooled", pooled, *n)
            }
            Op::Copy { src, dst } => need("dst", dst, src.len),
            Op::Gelu { n, u, g } => {
                need("u", u, *n)?;
                need("g", g, *n)
            }
            Op::GeluBack { n, u, du } => {
                need("u", u, *n)?;
                need("du", du, *n)
            }
            Op::LnStats {
                rows,
                width,
                x,
                stats,
            } => {
                need("x", x, rows * width)?;
                need("stats", stats, 2 * rows)
            }
            Op::LnBack {
                rows,
                width,
                dy,
                x,
                stats,
                gain,
                dx,
                ..
            } => {
                need("dy", dy, rows * width)?;
                need("x", x, rows * width)?;
                need("dx", dx, rows * width)?;
                need("stats", stats, 2 * rows)?;
                need("gain", gain, *width)
            }
            Op::LnGainGrad {
                rows,
                width,
                dy,
                x,
                stats,
                dgain,
            } => {
                need("dy", dy, rows * width)?;
                need("x", x, rows * width)?;
                need("stats", stats, 2 * rows)?;
                need("dgain", dgain, *width)
            }
            Op::ColumnSums {
                rows,
                cols,
                m,
                sums,
            } => {
                need("m", m, rows * cols)?;
                need("sums", sums, *cols)
            }
            Op::SoftmaxBack {
                rows,
                width,
                probs,
                d,
                ..
            } => {
                need("probs", probs, rows * width)?;
                need("d", d, rows * width)
            }
            Op::PoolBack {
                n,
                steps,
                width,
                dpooled,
                dz,
                ..
            } => {
                if *width == 0 || *steps == 0 || n % (steps * width) != 0 {
                    return Err(format!("{self:?}: n is not windows x steps x width"));
                }
                need("dpooled", dpooled, (n / steps / width) * width)?;
                need("dz", dz, *n)
            }
        }
    }
}

pub(super) fn params(offset: usize, len: usize) -> View {
    View {
        buf: Buf::Params,
        offset,
        len,
    }
}

pub(super) fn work(index: usize, offset: usize, len: usize) -> View {
    View {
        buf: Buf::Work(index),
        offset,
        len,
    }
}

/// A GEMM `Y = X W^T` (+ `Y` when `accumulate`), row-major: `X` is `rows x
/// inputs` in `x`, `W` is `outputs x inputs` in the parameters at
/// `weight`, `Y` is `rows x outputs` in `y`.
pub(super) fn linear(
    x: View,
    weight: usize,
    y: View,
    rows: usize,
    inputs: usize,
    outputs: usize,
    accumulate: bool,
) -> Op {
    Op::Gemm(GemmOp {
        transpose_a: true,
        transpose_b: false,
        m: outputs,
        n: rows,
        k: inputs,
        alpha: 1.0,
        beta: if accumulate { 1.0 } else { 0.0 },
        lda: inputs,
        ldb: inputs,
        ldc: outputs,
        batch: 1,
        stride_a: 0,
        stride_b: 0,
        stride_c: 0,
        a: params(weight, outputs * inputs),
        b: View {
            len: rows * inputs,
            ..x
        },
        c: View {
            len: rows * outputs,
            ..y
        },
    })
}

/// The stretch of `whole` from `offset` to its end: a strided-batched
/// GEMM that starts inside a buffer walks every window from there.
pub(super) fn from(whole: View, offset: usize) -> View {
    View {
        buf: whole.buf,
        offset: whole.offset + offset,
        len: whole.len - offset,
    }
}

/// Where one block's activations go in a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BlockViews {
    /// The residual stream entering the block.
    pub(super) input: View,
    pub(super) normed1: View,
    pub(super) qkv: View,
    /// The attention weights (the scores, softmaxed in place).
    pub(super) probs: View,
    pub(super) attended: View,
    /// The stream after attention's residual add. `input` itself when the
    /// stream is added to in place (inference); otherwise `input` is
    /// copied there first and stays as it was (training: LayerNorm's
    /// backward reads its input).
    pub(super) mid: View,
    pub(super) normed2: View,
    /// The hidden layer before GELU. `hidden` itself when it is not kept
    /// (bias and GELU fused, inference); otherwise the pre-activation
    /// stays for GELU's backward.
    pub(super) pre_gelu: View,
    pub(super) hidden: View,
    /// The stream leaving the block: `mid` when added to in place;
    /// otherwise `mid` is copied there first.
    pub(super) output: View,
}

/// Where a forward pass reads and writes: the one op sequence
/// ([`forward_ops`]) runs over the inference workspace
/// ([`inference_views`]) and over the training one, which keeps every
/// layer's activations (`backward::training_views`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ForwardViews {
    pub(super) raw: View,
    pub(super) normalised: View,
    /// The input projection's output, plus biases and positions: the
    /// first block's input.
    pub(super) embedded: View,
    pub(super) blocks: Vec<BlockViews>,
    /// The final LayerNorm's output.
    pub(super) final_normed: View,
    pub(super) pooled: View,
    pub(super) out: View,
}

/// The inference workspace's views for `windows` windows (the first
/// `windows` of each buffer): one residual stream added to in place, the
/// buffers reused by every layer.
pub(super) fn inference_views(config: &Config, windows: usize) -> ForwardViews {
    let sizes = per_window(config);
    let whole = |index: usize| work(index, 0, windows * sizes[index]);
    let stream = whole(STREAM);
    let block = BlockViews {
        input: stream,
        normed1: whole(NORMED),
        qkv: whole(QKV),
        probs: whole(SCORES),
        attended: whole(ATTENDED),
        mid: stream,
        normed2: whole(NORMED),
        pre_gelu: whole(HIDDEN),
        hidden: whole(HIDDEN),
        output: stream,
    };
    ForwardViews {
        raw: whole(RAW),
        normalised: whole(NORMALISED),
        embedded: stream,
        blocks: vec![block; config.layers],
        final_normed: whole(NORMED),
        pooled: whole(POOLED),
        out: whole(OUT),
    }
}

/// The forward pass of `windows` windows (the first `windows` of each
/// workspace buffer), from `raw` to `out` (`windows x outputs`).
pub(super) fn forward_plan(config: &Config, offsets: &Offsets, windows: usize) -> Vec<Op> {
    forward_ops(config, offsets, windows, &inference_views(config, windows))
}

/// The forward pass's operations over `views`: the one op sequence of
/// both the inference plan and the training forward. A block whose `mid`
/// (or `output`) differs from its input gets a copy before the residual
/// add; one whose `pre_gelu` differs from `hidden` gets the bias add and
/// GELU apart, the pre-activation kept.
pub(super) fn forward_ops(
    config: &Config,
    offsets: &Offsets,
    windows: usize,
    views: &ForwardViews,
) -> Vec<Op> {
    let (t, f, d, ff, o) = (
        config.window,
        config.features,
        config.d_model,
        config.ff,
        config.outputs,
    );
    let (heads, dh) = (config.heads, config.head_dim());
    let rows = windows * t;
    let mut ops = vec![
        Op::Normalize {
            n: rows * f,
            features: f,
            x: views.raw,
            mean: params(offsets.mean, f),
            std: params(offsets.std, f),
            out: views.normalised,
        },
        linear(
            views.normalised,
            offsets.embed_w,
            views.embedded,
            rows,
            f,
            d,
            false,
        ),
        Op::BiasPositions {
            n: rows * d,
            cols: d,
            period: t,
            bias: params(offsets.embed_b, d),
            positions: match offsets.position {
                Some(at) => params(at, t * d),
                None => View {
                    buf: Buf::Positions,
                    offset: 0,
                    len: t * d,
                },
            },
            y: views.embedded,
        },
    ];
    let layer_norm = |x: View, gain: usize, bias: usize, out: View| Op::LayerNorm {
        rows,
        width: d,
        x,
        gain: params(gain, d),
        bias: params(bias, d),
        out,
    };
    for (b, v) in offsets.blocks.iter().zip(&views.blocks) {
        ops.push(layer_norm(v.input, b.norm1_w, b.norm1_b, v.normed1));
        // One GEMM projects Q, K and V together: in_proj stacks their
        // weights, so each row of qkv is [q | k | v].
        ops.push(linear(v.normed1, b.in_w, v.qkv, rows, d, 3 * d, false));
        ops.push(Op::BiasAdd {
            n: rows * 3 * d,
            cols: 3 * d,
            bias: params(b.in_b, 3 * d),
            y: v.qkv,
        });
        // Scores S = Q K^T per (window, head), as S^T = K Q^T column-major:
        // K and Q are stored as column-major head_dim x window with
        // leading dimension 3 d_model; S^T (window x window, ld window) is
        // S row-major. One call per head, batched over the windows.
        for head in 0..heads {
            ops.push(Op::Gemm(GemmOp {
                transpose_a: true,
                transpose_b: false,
                m: t,
                n: t,
                k: dh,
                alpha: 1.0,
                beta: 0.0,
                lda: 3 * d,
                ldb: 3 * d,
                ldc: t,
                batch: windows,
                stride_a: t * 3 * d,
                stride_b: t * 3 * d,
                stride_c: heads * t * t,
                a: from(v.qkv, d + head * dh),
                b: from(v.qkv, head * dh),
                c: from(v.probs, head * t * t),
            }));
        }
        ops.push(Op::Softmax {
            rows: windows * heads * t,
            width: t,
            causal: config.causal,
            scale: 1.0 / (dh as f32).sqrt(),
            scores: v.probs,
        });
        // Context O = P V per (window, head), as O^T = V^T P^T
        // column-major: V^T is V's storage (ld 3 d_model), P^T is P's
        // (ld window), O^T lands in the head's columns of `attended`
        // (ld d_model).
        for head in 0..heads {
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
                ldc: d,
                batch: windows,
                stride_a: t * 3 * d,
                stride_b: heads * t * t,
                stride_c: t * d,
                a: from(v.qkv, 2 * d + head * dh),
                b: from(v.probs, head * t * t),
                c: from(v.attended, head * dh),
            }));
        }
        // The residual adds ride on the GEMMs: beta = 1 adds the product
        // to the stream (to its copy, when the block's input is kept).
        if v.mid != v.input {
            ops.push(Op::Copy {
                src: v.input,
                dst: v.mid,
            });
        }
        ops.push(linear(v.attended, b.out_w, v.mid, rows, d, d, true));
        ops.push(Op::BiasAdd {
            n: rows * d,
            cols: d,
            bias: params(b.out_b, d),
            y: v.mid,
        });
        ops.push(layer_norm(v.mid, b.norm2_w, b.norm2_b, v.normed2));
        ops.push(linear(v.normed2, b.ff1_w, v.pre_gelu, rows, d, ff, false));
        if v.pre_gelu == v.hidden {
            ops.push(Op::BiasGelu {
                n: rows * ff,
                cols: ff,
                bias: params(b.ff1_b, ff),
                y: v.hidden,
            });
        } else {
            ops.push(Op::BiasAdd {
                n: rows * ff,
                cols: ff,
                bias: params(b.ff1_b, ff),
                y: v.pre_gelu,
            });
            ops.push(Op::Gelu {
                n: rows * ff,
                u: v.pre_gelu,
                g: v.hidden,
            });
        }
        if v.output != v.mid {
            ops.push(Op::Copy {
                src: v.mid,
                dst: v.output,
            });
        }
        ops.push(linear(v.hidden, b.ff2_w, v.output, rows, ff, d, true));
        ops.push(Op::BiasAdd {
            n: rows * d,
            cols: d,
            bias: params(b.ff2_b, d),
            y: v.output,
        });
    }
    let last = views.blocks.last().map_or(views.embedded, |v| v.output);
    ops.push(layer_norm(
        last,
        offsets.final_w,
        offsets.final_b,
        views.final_normed,
    ));
    ops.push(Op::Pool {
        n: windows * d,
        steps: t,
        width: d,
        mean: config.pooling == Pooling::Mean,
        z: views.final_normed,
        pooled: views.pooled,
    });
    ops.push(linear(
        views.pooled,
        offsets.head_w,
        views.out,
        windows,
        d,
        o,
        false,
    ));
    ops.push(Op::BiasAdd {
        n: windows * o,
        cols: o,
        bias: params(offsets.head_b, o),
        y: views.out,
    });
    ops
}

/// The batch's windows cut into runs of at most `capacity`: the ranges
/// each pass takes.
pub(super) fn chunks(windows: usize, capacity: usize) -> Vec<std::ops::Range<usize>> {
    let capacity = capacity.max(1);
    (0..windows.div_ceil(capacity))
        .map(|i| i * capacity..((i + 1) * capacity).min(windows))
        .collect()
}
