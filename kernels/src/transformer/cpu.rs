//! The CPU twin: forward, gradients (by hand, layer by layer backwards)
//! and Adam, threads over the windows of a batch.
//!
//! Determinism: each window is computed by one thread from start to end;
//! gradients are summed within fixed blocks of [`GRAD_BLOCK`] windows in
//! window order, then the blocks in block order, so the bits depend on
//! neither the thread count nor the scheduling.

use rayon::prelude::*;

use super::{
    BlockOffsets, LN_EPS, Offsets, Optimizer, Pooling, TrainConfig, TrainReport, TrainWatch,
    Transformer, TransformerError, check_length, sinusoidal,
};
use crate::mlp::epoch_order;

/// Windows per gradient block.
const GRAD_BLOCK: usize = 4;

/// `sqrt(2 / pi)`, GELU's tanh-form constant.
const GELU_C: f32 = 0.797_884_6;

/// `c = a b` (`accumulate`: `c += a b`); `a` is `m x k`, `b` is `k x n`,
/// row-major. Rows of `c` are built by axpy over rows of `b`, which the
/// compiler vectorises.
fn matmul(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, accumulate: bool) {
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        if !accumulate {
            row.fill(0.0);
        }
        for p in 0..k {
            let scale = a[i * k + p];
            if scale == 0.0 {
                continue;
            }
            for (out, value) in row.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                *out += scale * *value;
            }
        }
    }
}

/// `c += a^T b`; `a` is `t x m`, `b` is `t x n`, `c` is `m x n`.
fn matmul_at_b(a: &[f32], b: &[f32], c: &mut [f32], t: usize, m: usize, n: usize) {
    for s in 0..t {
        let b_row = &b[s * n..(s + 1) * n];
        for i in 0..m {
            let scale = a[s * m + i];
            if scale == 0.0 {
                continue;
            }
            for (out, value) in c[i * n..(i + 1) * n].iter_mut().zip(b_row) {
                *out += scale * *value;
            }
        }
    }
}

/// `rows x cols` to `cols x rows`.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = a[r * cols + c];
        }
    }
    out
}

/// `y = x W^T + b` with `wt = W^T` (`inputs x outputs`).
fn linear(
    x: &[f32],
    wt: &[f32],
    bias: &[f32],
    rows: usize,
    inputs: usize,
    outputs: usize,
) -> Vec<f32> {
    let mut y = vec![0.0; rows * outputs];
    for row in y.chunks_exact_mut(outputs) {
        row.copy_from_slice(bias);
    }
    matmul(x, wt, &mut y, rows, inputs, outputs, true);
    y
}

/// LayerNorm of each row: the normalised rows (before the affine), and
/// each row's reciprocal standard deviation; `out` gets the affine.
fn layer_norm(
    x: &[f32],
    gain: &[f32],
    bias: &[f32],
    width: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = x.len() / width;
    let mut xhat = vec![0.0; x.len()];
    let mut out = vec![0.0; x.len()];
    let mut rstd = vec![0.0; rows];
    for r in 0..rows {
        let row = &x[r * width..(r + 1) * width];
        let mean = row.iter().sum::<f32>() / width as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let rs = 1.0 / (var + LN_EPS).sqrt();
        rstd[r] = rs;
        for c in 0..width {
            let h = (row[c] - mean) * rs;
            xhat[r * width + c] = h;
            out[r * width + c] = h * gain[c] + bias[c];
        }
    }
    (out, xhat, rstd)
}

/// LayerNorm backwards: `dgain`, `dbias` accumulate; returns `dx`.
fn layer_norm_back(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    gain: &[f32],
    dgain: &mut [f32],
    dbias: &mut [f32],
    width: usize,
) -> Vec<f32> {
    let mut dx = vec![0.0; dy.len()];
    let mut dxhat = vec![0.0; width];
    for (r, rs) in rstd.iter().enumerate() {
        let (dy_row, h_row) = (
            &dy[r * width..(r + 1) * width],
            &xhat[r * width..(r + 1) * width],
        );
        let (mut mean_d, mut mean_dh) = (0.0f32, 0.0f32);
        for c in 0..width {
            dgain[c] += dy_row[c] * h_row[c];
            dbias[c] += dy_row[c];
            dxhat[c] = dy_row[c] * gain[c];
            mean_d += dxhat[c];
            mean_dh += dxhat[c] * h_row[c];
        }
        mean_d /= width as f32;
        mean_dh /= width as f32;
        for c in 0..width {
            dx[r * width + c] = rs * (dxhat[c] - mean_d - h_row[c] * mean_dh);
        }
    }
    dx
}

fn gelu(u: f32) -> f32 {
    0.5 * u * (1.0 + (GELU_C * (u + 0.044_715 * u * u * u)).tanh())
}

fn gelu_derivative(u: f32) -> f32 {
    let th = (GELU_C * (u + 0.044_715 * u * u * u)).tanh();
    0.5 * (1.0 + th) + 0.5 * u * (1.0 - th * th) * GELU_C * (1.0 + 3.0 * 0.044_715 * u * u)
}

/// The weights transposed once per pass, shared by every window.
struct Prepared {
    embed_t: Vec<f32>,
    positions: Vec<f32>,
    blocks: Vec<PreparedBlock>,
    head_t: Vec<f32>,
}

struct PreparedBlock {
    in_t: Vec<f32>,
    out_t: Vec<f32>,
    ff1_t: Vec<f32>,
    ff2_t: Vec<f32>,
}

impl Prepared {
    fn new(model: &Transformer, offsets: &Offsets) -> Prepared {
        let c = &model.config;
        let p = &model.params;
        let (f, d, ff) = (c.features, c.d_model, c.ff);
        let t =
            |at: usize, rows: usize, cols: usize| transpose(&p[at..at + rows * cols], rows, cols);
        Prepared {
            embed_t: t(offsets.embed_w, d, f),
            positions: match offsets.position {
                Some(at) => p[at..at + c.window * d].to_vec(),
                None => sinusoidal(c.window, d),
            },
            blocks: offsets
                .blocks
                .iter()
                .map(|b| PreparedBlock {
                    in_t: t(b.in_w, 3 * d, d),
                    out_t: t(b.out_w, d, d),
                    ff1_t: t(b.ff1_w, ff, d),
                    ff2_t: t(b.ff2_w, d, ff),
                })
                .collect(),
            head_t: t(offsets.head_w, c.outputs, d),
        }
    }
}

/// What one block's forward keeps for the backward pass.
struct BlockCache {
    xhat1: Vec<f32>,
    rstd1: Vec<f32>,
    h1: Vec<f32>,
    /// Per head, `q`, `k`, `v` as `window x head_dim`.
    q: Vec<Vec<f32>>,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Per head, the attention weights `window x window`.
    probs: Vec<Vec<f32>>,
    attended: Vec<f32>,
    xhat2: Vec<f32>,
    rstd2: Vec<f32>,
    h2: Vec<f32>,
    u: Vec<f32>,
    g: Vec<f32>,
}

/// What one window's forward keeps.
struct Cache {
    normalised: Vec<f32>,
    blocks: Vec<BlockCache>,
    xhat_final: Vec<f32>,
    rstd_final: Vec<f32>,
    pooled: Vec<f32>,
}

/// One window through the network: its outputs, and (when `keep`) the
/// cache for the backward pass.
fn forward_window(
    model: &Transformer,
    offsets: &Offsets,
    prepared: &Prepared,
    window: &[f32],
    keep: bool,
) -> (Vec<f32>, Option<Cache>) {
    let c = &model.config;
    let p = &model.params;
    let (t, f, d, ff, dh) = (c.window, c.features, c.d_model, c.ff, c.head_dim());
    let mean = &p[offsets.mean..offsets.mean + f];
    let std = &p[offsets.std..offsets.std + f];
    let normalised: Vec<f32> = window
        .iter()
        .enumerate()
        .map(|(i, x)| (x - mean[i % f]) / std[i % f])
        .collect();
    let mut x = linear(
        &normalised,
        &prepared.embed_t,
        &p[offsets.embed_b..offsets.embed_b + d],
        t,
        f,
        d,
    );
    for (value, position) in x.iter_mut().zip(&prepared.positions) {
        *value += *position;
    }
    let scale = 1.0 / (dh as f32).sqrt();
    let mut caches = Vec::new();
    for (b, pb) in offsets.blocks.iter().zip(&prepared.blocks) {
        let (h1, xhat1, rstd1) = layer_norm(
            &x,
            &p[b.norm1_w..b.norm1_w + d],
            &p[b.norm1_b..b.norm1_b + d],
            d,
        );
        let qkv = linear(&h1, &pb.in_t, &p[b.in_b..b.in_b + 3 * d], t, d, 3 * d);
        let split = |part: usize, head: usize| -> Vec<f32> {
            let mut out = Vec::with_capacity(t * dh);
            for s in 0..t {
                let start = s * 3 * d + part * d + head * dh;
                out.extend_from_slice(&qkv[start..start + dh]);
            }
            out
        };
        let mut attended = vec![0.0; t * d];
        let (mut qs, mut ks, mut vs, mut ps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for head in 0..c.heads {
            let (q, k, v) = (split(0, head), split(1, head), split(2, head));
            let kt = transpose(&k, t, dh);
            let mut scores = vec![0.0; t * t];
            matmul(&q, &kt, &mut scores, t, dh, t, false);
            for (r, row) in scores.chunks_exact_mut(t).enumerate() {
                let visible = if c.causal { r + 1 } else { t };
                let mut max = f32::NEG_INFINITY;
                for value in &mut row[..visible] {
                    *value *= scale;
                    max = max.max(*value);
                }
                let mut sum = 0.0;
                for value in &mut row[..visible] {
                    *value = (*value - max).exp();
                    sum += *value;
                }
                for value in &mut row[..visible] {
                    *value /= sum;
                }
                row[visible..].fill(0.0);
            }
            let mut out = vec![0.0; t * dh];
            matmul(&scores, &v, &mut out, t, t, dh, false);
            for s in 0..t {
                attended[s * d + head * dh..s * d + (head + 1) * dh]
                    .copy_from_slice(&out[s * dh..(s + 1) * dh]);
            }
            if keep {
                qs.push(q);
                ks.push(k);
                vs.push(v);
                ps.push(scores);
            }
        }
        let projected = linear(&attended, &pb.out_t, &p[b.out_b..b.out_b + d], t, d, d);
        for (value, add) in x.iter_mut().zip(&projected) {
            *value += *add;
        }
        let (h2, xhat2, rstd2) = layer_norm(
            &x,
            &p[b.norm2_w..b.norm2_w + d],
            &p[b.norm2_b..b.norm2_b + d],
            d,
        );
        let u = linear(&h2, &pb.ff1_t, &p[b.ff1_b..b.ff1_b + ff], t, d, ff);
        let g: Vec<f32> = u.iter().map(|v| gelu(*v)).collect();
        let out = linear(&g, &pb.ff2_t, &p[b.ff2_b..b.ff2_b + d], t, ff, d);
        for (value, add) in x.iter_mut().zip(&out) {
            *value += *add;
        }
        if keep {
            caches.push(BlockCache {
                xhat1,
                rstd1,
                h1,
                q: qs,
                k: ks,
                v: vs,
                probs: ps,
                attended,
                xhat2,
                rstd2,
                h2,
                u,
                g,
            });
        }
    }
    let (z, xhat_final, rstd_final) = layer_norm(
        &x,
        &p[offsets.final_w..offsets.final_w + d],
        &p[offsets.final_b..offsets.final_b + d],
        d,
    );
    let pooled: Vec<f32> = match c.pooling {
        Pooling::Last => z[(t - 1) * d..].to_vec(),
        Pooling::Mean => {
            let mut sum = vec![0.0; d];
            for row in z.chunks_exact(d) {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += *v;
                }
            }
            sum.iter().map(|s| s / t as f32).collect()
        }
    };
    let y = linear(
        &pooled,
        &prepared.head_t,
        &p[offsets.head_b..offsets.head_b + c.outputs],
        1,
        d,
        c.outputs,
    );
    let cache = keep.then_some(Cache {
        normalised,
        blocks: caches,
        xhat_final,
        rstd_final,
        pooled,
    });
    (y, cache)
}

/// One window backwards from `dy` (`outputs`), adding its gradients to
/// `grad` (flat, like the parameters).
fn backward_window(
    model: &Transformer,
    offsets: &Offsets,
    cache: &Cache,
    dy: &[f32],
    grad: &mut [f32],
) {
    let c = &model.config;
    let p = &model.params;
    let (t, f, d, ff, dh) = (c.window, c.features, c.d_model, c.ff, c.head_dim());
    let o = c.outputs;
    // Head.
    matmul_at_b(
        dy,
        &cache.pooled,
        &mut grad[offsets.head_w..offsets.head_w + o * d],
        1,
        o,
        d,
    );
    for (g, v) in grad[offsets.head_b..offsets.head_b + o].iter_mut().zip(dy) {
        *g += *v;
    }
    let mut dpooled = vec![0.0; d];
    matmul(
        dy,
        &p[offsets.head_w..offsets.head_w + o * d],
        &mut dpooled,
        1,
        o,
        d,
        false,
    );
    let mut dz = vec![0.0; t * d];
    match c.pooling {
        Pooling::Last => dz[(t - 1) * d..].copy_from_slice(&dpooled),
        Pooling::Mean => {
            for row in dz.chunks_exact_mut(d) {
                for (r, v) in row.iter_mut().zip(&dpooled) {
                    *r = v / t as f32;
                }
            }
        }
    }
    let (gain_grad, bias_grad) = two_mut(grad, offsets.final_w, offsets.final_b, d);
    let mut dx = layer_norm_back(
        &dz,
        &cache.xhat_final,
        &cache.rstd_final,
        &p[offsets.final_w..offsets.final_w + d],
        gain_grad,
        bias_grad,
        d,
    );
    let scale = 1.0 / (dh as f32).sqrt();
    for (b, bc) in offsets.blocks.iter().zip(&cache.blocks).rev() {
        block_backward(model, b, bc, &mut dx, grad, (t, d, ff, dh), scale);
    }
    // Input projection and positions.
    matmul_at_b(
        &dx,
        &cache.normalised,
        &mut grad[offsets.embed_w..offsets.embed_w + d * f],
        t,
        d,
        f,
    );
    add_column_sums(&dx, &mut grad[offsets.embed_b..offsets.embed_b + d], d);
    if let Some(at) = offsets.position {
        for (g, v) in grad[at..at + t * d].iter_mut().zip(&dx) {
            *g += *v;
        }
    }
}

fn block_backward(
    model: &Transformer,
    b: &BlockOffsets,
    bc: &BlockCache,
    dx: &mut [f32],
    grad: &mut [f32],
    (t, d, ff, dh): (usize, usize, usize, usize),
    scale: f32,
) {
    let p = &model.params;
    // Feed-forward.
    matmul_at_b(dx, &bc.g, &mut grad[b.ff2_w..b.ff2_w + d * ff], t, d, ff);
    add_column_sums(dx, &mut grad[b.ff2_b..b.ff2_b + d], d);
    let mut du = vec![0.0; t * ff];
    matmul(dx, &p[b.ff2_w..b.ff2_w + d * ff], &mut du, t, d, ff, false);
    for (value, u) in du.iter_mut().zip(&bc.u) {
        *value *= gelu_derivative(*u);
    }
    matmul_at_b(&du, &bc.h2, &mut grad[b.ff1_w..b.ff1_w + ff * d], t, ff, d);
    add_column_sums(&du, &mut grad[b.ff1_b..b.ff1_b + ff], ff);
    let mut dh2 = vec![0.0; t * d];
    matmul(
        &du,
        &p[b.ff1_w..b.ff1_w + ff * d],
        &mut dh2,
        t,
        ff,
        d,
        false,
    );
    let (gain_grad, bias_grad) = two_mut(grad, b.norm2_w, b.norm2_b, d);
    let from_norm = layer_norm_back(
        &dh2,
        &bc.xhat2,
        &bc.rstd2,
        &p[b.norm2_w..b.norm2_w + d],
        gain_grad,
        bias_grad,
        d,
    );
    for (value, add) in dx.iter_mut().zip(&from_norm) {
        *value += *add;
    }
    // Attention.
    matmul_at_b(
        dx,
        &bc.attended,
        &mut grad[b.out_w..b.out_w + d * d],
        t,
        d,
        d,
    );
    add_column_sums(dx, &mut grad[b.out_b..b.out_b + d], d);
    let mut dattended = vec![0.0; t * d];
    matmul(
        dx,
        &p[b.out_w..b.out_w + d * d],
        &mut dattended,
        t,
        d,
        d,
        false,
    );
    let mut dqkv = vec![0.0; t * 3 * d];
    let heads = bc.probs.len();
    for head in 0..heads {
        let mut dout = Vec::with_capacity(t * dh);
        for s in 0..t {
            dout.extend_from_slice(&dattended[s * d + head * dh..s * d + (head + 1) * dh]);
        }
        let probs = &bc.probs[head];
        // dV = A^T dO; dA = dO V^T.
        let mut dv = vec![0.0; t * dh];
        matmul_at_b(probs, &dout, &mut dv, t, t, dh);
        let vt = transpose(&bc.v[head], t, dh);
        let mut dscores = vec![0.0; t * t];
        matmul(&dout, &vt, &mut dscores, t, dh, t, false);
        for (row, prob) in dscores.chunks_exact_mut(t).zip(probs.chunks_exact(t)) {
            let dot: f32 = row.iter().zip(prob).map(|(a, b)| a * b).sum();
            for (value, pr) in row.iter_mut().zip(prob) {
                *value = pr * (*value - dot) * scale;
            }
        }
        // dQ = dS K; dK = dS^T Q.
        let mut dq = vec![0.0; t * dh];
        matmul(&dscores, &bc.k[head], &mut dq, t, t, dh, false);
        let mut dk = vec![0.0; t * dh];
        matmul_at_b(&dscores, &bc.q[head], &mut dk, t, t, dh);
        for s in 0..t {
            for (part, source) in [(0, &dq), (1, &dk), (2, &dv)] {
                let start = s * 3 * d + part * d + head * dh;
                dqkv[start..start + dh].copy_from_slice(&source[s * dh..(s + 1) * dh]);
            }
        }
    }
    matmul_at_b(
        &dqkv,
        &bc.h1,
        &mut grad[b.in_w..b.in_w + 3 * d * d],
        t,
        3 * d,
        d,
    );
    add_column_sums(&dqkv, &mut grad[b.in_b..b.in_b + 3 * d], 3 * d);
    let mut dh1 = vec![0.0; t * d];
    matmul(
        &dqkv,
        &p[b.in_w..b.in_w + 3 * d * d],
        &mut dh1,
        t,
        3 * d,
        d,
        false,
    );
    let (gain_grad, bias_grad) = two_mut(grad, b.norm1_w, b.norm1_b, d);
    let from_norm = layer_norm_back(
        &dh1,
        &bc.xhat1,
        &bc.rstd1,
        &p[b.norm1_w..b.norm1_w + d],
        gain_grad,
        bias_grad,
        d,
    );
    for (value, add) in dx.iter_mut().zip(&from_norm) {
        *value += *add;
    }
}

/// Two disjoint `len`-float stretches of `grad` starting at `a < b`.
fn two_mut(grad: &mut [f32], a: usize, b: usize, len: usize) -> (&mut [f32], &mut [f32]) {
    let (first, second) = grad.split_at_mut(b);
    (&mut first[a..a + len], &mut second[..len])
}

fn add_column_sums(rows: &[f32], out: &mut [f32], width: usize) {
    for row in rows.chunks_exact(width) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += *v;
        }
    }
}

fn check_inputs(model: &Transformer, inputs: &[f32], batch: usize) -> Result<(), TransformerError> {
    model.check()?;
    check_length("inputs", inputs, batch, model.config.window_floats())
}

/// The outputs (`batch x outputs`) for `batch` windows (`batch x window x
/// features`, row-major), windows in parallel.
pub fn forward_cpu(
    model: &Transformer,
    inputs: &[f32],
    batch: usize,
) -> Result<Vec<f32>, TransformerError> {
    check_inputs(model, inputs, batch)?;
    let offsets = Offsets::new(&model.config);
    let prepared = Prepared::new(model, &offsets);
    let per = model.config.window_floats();
    let outputs: Vec<Vec<f32>> = inputs
        .par_chunks(per)
        .map(|window| forward_window(model, &offsets, &prepared, window, false).0)
        .collect();
    Ok(outputs.concat())
}

/// Mean squared error over `batch` windows against `targets` (`batch x
/// outputs`), summed in f64 in window order.
pub fn loss_cpu(
    model: &Transformer,
    inputs: &[f32],
    targets: &[f32],
    batch: usize,
) -> Result<f64, TransformerError> {
    check_length("targets", targets, batch, model.config.outputs)?;
    if batch == 0 {
        return Err(TransformerError::BadTraining("no windows".into()));
    }
    let predictions = forward_cpu(model, inputs, batch)?;
    Ok(squared_error(&predictions, targets) / targets.len() as f64)
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

/// The mean squared error's gradient over `batch` windows (flat, like the
/// parameters) and the loss before any update.
pub fn gradients_cpu(
    model: &Transformer,
    inputs: &[f32],
    targets: &[f32],
    batch: usize,
) -> Result<(Vec<f32>, f64), TransformerError> {
    check_inputs(model, inputs, batch)?;
    check_length("targets", targets, batch, model.config.outputs)?;
    if batch == 0 {
        return Err(TransformerError::BadTraining("no windows".into()));
    }
    let offsets = Offsets::new(&model.config);
    let prepared = Prepared::new(model, &offsets);
    let (per, o) = (model.config.window_floats(), model.config.outputs);
    // d(mean of squares)/dy = 2 (y - t) / (batch x outputs).
    let factor = 2.0 / (batch * o) as f32;
    let blocks: Vec<(Vec<f32>, f64)> = inputs
        .par_chunks(per * GRAD_BLOCK)
        .zip(targets.par_chunks(o * GRAD_BLOCK))
        .map(|(windows, wanted)| {
            let mut grad = vec![0.0; offsets.total];
            let mut error = 0.0;
            for (window, target) in windows.chunks_exact(per).zip(wanted.chunks_exact(o)) {
                let (y, cache) = forward_window(model, &offsets, &prepared, window, true);
                error += squared_error(&y, target);
                let dy: Vec<f32> = y
                    .iter()
                    .zip(target)
                    .map(|(y, t)| factor * (y - t))
                    .collect();
                if let Some(cache) = cache {
                    backward_window(model, &offsets, &cache, &dy, &mut grad);
                }
            }
            (grad, error)
        })
        .collect();
    let mut total = vec![0.0; offsets.total];
    let mut error = 0.0;
    for (grad, e) in &blocks {
        for (t, g) in total.iter_mut().zip(grad) {
            *t += *g;
        }
        error += e;
    }
    Ok((total, error / (batch * o) as f64))
}

/// Adam's (or SGD's) memory between steps.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamState {
    pub step: u64,
    pub first: Vec<f32>,
    pub second: Vec<f32>,
}

impl AdamState {
    pub fn new(model: &Transformer) -> AdamState {
        AdamState {
            step: 0,
            first: vec![0.0; model.params.len()],
            second: vec![0.0; model.params.len()],
        }
    }
}

/// The input normalisation is data, not trained: its gradient is zero, and
/// the update leaves it be.
fn apply_update(
    model: &mut Transformer,
    state: &mut AdamState,
    grad: &[f32],
    optimizer: &Optimizer,
) {
    state.step += 1;
    let frozen = 2 * model.config.features;
    let lanes = model.params[frozen..]
        .iter_mut()
        .zip(&mut state.first[frozen..])
        .zip(&mut state.second[frozen..])
        .zip(&grad[frozen..]);
    match *optimizer {
        Optimizer::Sgd { lr, momentum } => {
            for (((p, m), _), g) in lanes {
                *m = momentum * *m + g;
                *p -= lr * *m;
            }
        }
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => {
            let t = i32::try_from(state.step).unwrap_or(i32::MAX);
            let c1 = (1.0 / (1.0 - f64::from(beta1).powi(t))) as f32;
            let c2 = (1.0 / (1.0 - f64::from(beta2).powi(t))) as f32;
            for (((p, m), v), g) in lanes {
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * (g * g);
                *p -= lr * (*m * c1) / ((*v * c2).sqrt() + eps);
            }
        }
    }
}

/// One optimizer step on one mini-batch; returns the loss before it.
pub fn train_step(
    model: &mut Transformer,
    state: &mut AdamState,
    inputs: &[f32],
    targets: &[f32],
    batch: usize,
    optimizer: &Optimizer,
) -> Result<f64, TransformerError> {
    if state.first.len() != model.params.len() || state.second.len() != model.params.len() {
        return Err(TransformerError::BadTraining(
            "the optimizer state is not shaped like the model".into(),
        ));
    }
    let (grad, loss) = gradients_cpu(model, inputs, targets, batch)?;
    apply_update(model, state, &grad, optimizer);
    Ok(loss)
}

/// Trains `model` in place on `samples` windows against `targets`
/// (`samples x outputs`): `config.epochs` passes in a seeded shuffled order
/// ([`epoch_order`], as the MLP), mini-batches of `config.batch_size`.
/// `watch.stop` is asked before each epoch.
pub fn train_cpu_until(
    model: &mut Transformer,
    inputs: &[f32],
    targets: &[f32],
    samples: usize,
    config: &TrainConfig,
    watch: TrainWatch<'_>,
) -> Result<TrainReport, TransformerError> {
    check_inputs(model, inputs, samples)?;
    check_length("targets", targets, samples, model.config.outputs)?;
    if samples == 0 {
        return Err(TransformerError::BadTraining("no windows".into()));
    }
    if config.batch_size == 0 || config.epochs == 0 {
        return Err(TransformerError::BadTraining(
            "epochs and batch_size must be at least 1".into(),
        ));
    }
    let (per, o) = (model.config.window_floats(), model.config.outputs);
    let mut state = AdamState::new(model);
    let mut report = TrainReport {
        losses: Vec::new(),
        steps: 0,
    };
    for epoch in 0..config.epochs {
        if (watch.stop)() {
            return Err(TransformerError::Stopped);
        }
        let order = epoch_order(samples, config.seed, epoch);
        let mut weighted = 0.0;
        for chunk in order.chunks(config.batch_size) {
            let mut x = Vec::with_capacity(chunk.len() * per);
            let mut y = Vec::with_capacity(chunk.len() * o);
            for &i in chunk {
                x.extend_from_slice(&inputs[i * per..(i + 1) * per]);
                y.extend_from_slice(&targets[i * o..(i + 1) * o]);
            }
            let loss = train_step(model, &mut state, &x, &y, chunk.len(), &config.optimizer)?;
            weighted += loss * chunk.len() as f64;
            report.steps += 1;
        }
        let loss = weighted / samples as f64;
        report.losses.push(loss);
        (watch.epoch_done)(epoch, loss);
    }
    Ok(report)
}
