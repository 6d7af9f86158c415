// The transformer's element-wise and row-wise kernels. The matrix products
// (projections, attention scores and context) run in cuBLAS
// (kernels/src/transformer_gpu/); these kernels do what lies between them:
// input normalisation, bias plus positions, bias add, bias plus GELU,
// LayerNorm, the masked softmax and the pooling. The residual adds are
// fused into the GEMMs (beta = 1 accumulates into the residual stream).
// All matrices are row-major: element (r, c) of a rows x cols matrix is at
// r * cols + c. The maths is the CPU twin's (kernels/src/transformer/
// cpu.rs): the same formulas in the same order where the order is free.

// sqrt(2 / pi) and the cubic coefficient of GELU's tanh form (PyTorch's
// gelu(approximate="tanh")), as the CPU twin's GELU_C.
#define TF_GELU_C 0.7978846f
#define TF_GELU_CUBIC 0.044715f

// LayerNorm's epsilon, the CPU twin's LN_EPS (PyTorch's default).
#define TF_LN_EPS 1e-5f

// Rows per block in the warp-per-row kernels: blocks are (32, TF_ROWS).
#define TF_ROWS 8

// The flat index of this thread over a one-dimensional grid.
__device__ __forceinline__ unsigned long long tf_index() {
    return (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ float tf_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

__device__ __forceinline__ float tf_warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// out = (x - mean) / stdev, per feature.
extern "C" __global__ void tf_normalize(
    unsigned long long n,            // windows * window * features
    unsigned int features,
    const float* __restrict__ x,     // device [windows * window, features]
    const float* __restrict__ mean,  // device [features]
    const float* __restrict__ stdev, // device [features]
    float* __restrict__ out)         // device [windows * window, features]
{
    const unsigned long long i = tf_index();
    if (i >= n) {
        return;
    }
    const unsigned int f = (unsigned int)(i % features);
    out[i] = (x[i] - mean[f]) / stdev[f];
}

// y = (y + bias) + positions: the input projection's bias and the position
// table, row r of y taking position row r % period (its time step).
extern "C" __global__ void tf_bias_positions(
    unsigned long long n,                // rows * cols
    unsigned int cols,
    unsigned int period,                 // the window: positions' rows
    const float* __restrict__ bias,      // device [cols]
    const float* __restrict__ positions, // device [period, cols]
    float* __restrict__ y)               // device [rows, cols]
{
    const unsigned long long i = tf_index();
    if (i >= n) {
        return;
    }
    const unsigned int c = (unsigned int)(i % cols);
    const unsigned int step = (unsigned int)((i / cols) % period);
    y[i] = (y[i] + bias[c]) + positions[(unsigned long long)step * cols + c];
}

// y = y + bias, per column.
extern "C" __global__ void tf_bias_add(
    unsigned long long n,            // rows * cols
    unsigned int cols,
    const float* __restrict__ bias,  // device [cols]
    float* __restrict__ y)           // device [rows, cols]
{
    const unsigned long long i = tf_index();
    if (i >= n) {
        return;
    }
    y[i] = y[i] + bias[(unsigned int)(i % cols)];
}

// y = gelu(y + bias), GELU's tanh form.
extern "C" __global__ void tf_bias_gelu(
    unsigned long long n,            // rows * cols
    unsigned int cols,
    const float* __restrict__ bias,  // device [cols]
    float* __restrict__ y)           // device [rows, cols]
{
    const unsigned long long i = tf_index();
    if (i >= n) {
        return;
    }
    const float u = y[i] + bias[(unsigned int)(i % cols)];
    y[i] = 0.5f * u * (1.0f + tanhf(TF_GELU_C * (u + TF_GELU_CUBIC * u * u * u)));
}

// out = (x - mean) / sqrt(var + eps) * gain + bias per row, the variance
// biased (divided by width) and taken about the mean in a second pass, as
// the CPU twin. One warp per row, blocks of (32, TF_ROWS): lane l reads
// columns l, l + 32, ... so a warp reads consecutive addresses.
extern "C" __global__ void tf_layer_norm(
    unsigned int rows,
    unsigned int width,
    const float* __restrict__ x,     // device [rows, width]
    const float* __restrict__ gain,  // device [width]
    const float* __restrict__ bias,  // device [width]
    float* __restrict__ out)         // device [rows, width]
{
    const unsigned int row = blockIdx.x * TF_ROWS + threadIdx.y;
    if (row >= rows) {
        return;
    }
    const unsigned int lane = threadIdx.x;
    const float* in = x + (unsigned long long)row * width;
    float* dst = out + (unsigned long long)row * width;
    float sum = 0.0f;
    for (unsigned int c = lane; c < width; c += 32) {
        sum += in[c];
    }
    const float mean = tf_warp_sum(sum) / (float)width;
    float squares = 0.0f;
    for (unsigned int c = lane; c < width; c += 32) {
        const float d = in[c] - mean;
        squares += d * d;
    }
    const float var = tf_warp_sum(squares) / (float)width;
    const float rstd = 1.0f / sqrtf(var + TF_LN_EPS);
    for (unsigned int c = lane; c < width; c += 32) {
        dst[c] = (in[c] - mean) * rstd * gain[c] + bias[c];
    }
}

// Each row of scores: times scale, then the softmax over its visible
// columns (all of them, or with causal the first (row % width) + 1: a
// query sees itself and the steps before it), the rest set to 0. The
// maximum is subtracted before exp, so no row overflows. One warp per
// row, blocks of (32, TF_ROWS). Rows are [windows, heads, window] with
// width = window, so row % width is the query's time step.
extern "C" __global__ void tf_softmax(
    unsigned long long rows,         // windows * heads * window
    unsigned int width,              // the window
    unsigned int causal,             // 1: mask the future
    float scale,                     // 1 / sqrt(head_dim)
    float* __restrict__ scores)      // device [rows, width]
{
    const unsigned long long row = (unsigned long long)blockIdx.x * TF_ROWS + threadIdx.y;
    if (row >= rows) {
        return;
    }
    const unsigned int lane = threadIdx.x;
    float* s = scores + row * width;
    const unsigned int visible = causal ? (unsigned int)(row % width) + 1u : width;
    float max = -__int_as_float(0x7f800000); // -infinity (NVRTC has no math.h)
    for (unsigned int c = lane; c < visible; c += 32) {
        max = fmaxf(max, s[c] * scale);
    }
    max = tf_warp_max(max);
    float sum = 0.0f;
    for (unsigned int c = lane; c < visible; c += 32) {
        const float e = expf(s[c] * scale - max);
        s[c] = e;
        sum += e;
    }
    sum = tf_warp_sum(sum);
    for (unsigned int c = lane; c < width; c += 32) {
        s[c] = c < visible ? s[c] / sum : 0.0f;
    }
}

// pooled[w, c] = z[w, steps - 1, c] (last) or the mean over the window's
// steps, summed in step order then divided, as the CPU twin.
extern "C" __global__ void tf_pool(
    unsigned long long n,            // windows * width
    unsigned int steps,              // the window
    unsigned int width,              // d_model
    unsigned int mean,               // 1: mean, 0: last step
    const float* __restrict__ z,     // device [windows, steps, width]
    float* __restrict__ pooled)      // device [windows, width]
{
    const unsigned long long i = tf_index();
    if (i >= n) {
        return;
    }
    const unsigned long long w = i / width;
    const unsigned int c = (unsigned int)(i % width);
    const float* base = z + w * steps * width + c;
    if (mean) {
        float sum = 0.0f;
        for (unsigned int t = 0; t < steps; t++) {
            sum += base[(unsigned long long)t * width];
        }
        pooled[i] = sum / (float)steps;
    } else {
        pooled[i] = base[(unsigned long long)(steps - 1) * width];
    }
}

// ---------------------------------------------------------------------------
// Training: the backward pass's kernels. The forward for training keeps every
// activation the backward needs (kernels/src/transformer_gpu/train.rs); the
// GEMMs' gradients run in cuBLAS. The formulas are the CPU twin's
// (kernels/src/transformer/cpu.rs, backward_window and block_backward).

// g = gelu(u): the forward for training keeps the pre-activation u apart.
extern "C" __global__ void tf_gelu(
    unsigned long long n,            // rows * cols
    const float* __restrict__ u,     // device [rows, cols]
    float* __restrict__ g)           // device [rows, cols]
{
    const unsigned long long i = tf_index();
    if (i >= n) {
        return;
    }
    const float x = u[i];
    g[i] = 0.5f * x * (1.0f + tanhf(TF_GELU_C * (x + TF_GELU_CUBIC * x * x * x)));
}

// du = du * gelu'(u), in place.
extern "C" __global__ void tf_gelu_backward(
    unsigned long long n,            // rows * cols
    const float* __restrict__ u,     // device [rows, cols], the pre-activation
    float* __restrict__ du)          // device [rows, cols]
{
    const unsigned long long i = tf_index();
    if (i >= n) {
        return;
    }
    const float x = u[i];
    const float th = tanhf(TF_GELU_C * (x + TF_GELU_CUBIC * x * x * x));
    const float derivative = 0.5f * (1.0f + th)
        + 0.5f * x * (1.0f - th * th) * TF_GELU_C * (1.0f + 3.0f * TF_GELU_CUBIC * x * x);
    du[i] = du[i] * derivative;
}

// stats[r] = (mean, 1 / sqrt(var + eps)) of row r, as tf_layer_norm
// computes them. One warp per row, blocks of (32, TF_ROWS).
extern "C" __global__ void tf_ln_stats(
    unsigned int rows,
    unsigned int width,
    const float* __restrict__ x,     // device [rows, width]
    float* __restrict__ stats)       // device [rows, 2]
{
    const unsigned int row = blockIdx.x * TF_ROWS + threadIdx.y;
    if (row >= rows) {
        return;
    }
    const unsigned int lane = threadIdx.x;
    const float* in = x + (unsigned long long)row * width;
    float sum = 0.0f;
    for (unsigned int c = lane; c < width; c += 32) {
        sum += in[c];
    }
    const float mean = tf_warp_sum(sum) / (float)width;
    float squares = 0.0f;
    for (unsigned int c = lane; c < width; c += 32) {
        const float d = in[c] - mean;
        squares += d * d;
    }
    const float var = tf_warp_sum(squares) / (float)width;
    if (lane == 0) {
        stats[2ull * row] = mean;
        stats[2ull * row + 1] = 1.0f / sqrtf(var + TF_LN_EPS);
    }
}

// LayerNorm backwards to its input: with xhat = (x - mean) rstd and
// dxhat = dy gain, dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),
// added to dx when accumulate (the residual stream's gradient), else
// written. One warp per row, blocks of (32, TF_ROWS).
extern "C" __global__ void tf_ln_backward(
    unsigned int rows,
    unsigned int width,
    unsigned int accumulate,         // 1: dx += ..., 0: dx = ...
    const float* __restrict__ dy,    // device [rows, width]
    const float* __restrict__ x,     // device [rows, width], the LayerNorm's input
    const float* __restrict__ stats, // device [rows, 2], from tf_ln_stats
    const float* __restrict__ gain,  // device [width]
    float* __restrict__ dx)          // device [rows, width]
{
    const unsigned int row = blockIdx.x * TF_ROWS + threadIdx.y;
    if (row >= rows) {
        return;
    }
    const unsigned int lane = threadIdx.x;
    const unsigned long long base = (unsigned long long)row * width;
    const float mean = stats[2ull * row];
    const float rstd = stats[2ull * row + 1];
    float sum_d = 0.0f;
    float sum_dh = 0.0f;
    for (unsigned int c = lane; c < width; c += 32) {
        const float h = (x[base + c] - mean) * rstd;
        const float d = dy[base + c] * gain[c];
        sum_d += d;
        sum_dh += d * h;
    }
    const float mean_d = tf_warp_sum(sum_d) / (float)width;
    const float mean_dh = tf_warp_sum(sum_dh) / (float)width;
    for (unsigned int c = lane; c < width; c += 32) {
        const float h = (x[base + c] - mean) * rstd;
        const float d = dy[base + c] * gain[c];
        const float value = rstd * (d - mean_d - h * mean_dh);
        dx[base + c] = accumulate ? dx[base + c] + value : value;
    }
}

// Column sums in blocks of (32, TF_SUM_LANES): thread (x, l) owns column
// blockIdx.x * 32 + x and adds rows l, l + 8, ... in order; the partial
// sums are then added in a fixed order, so the result is the same on
// every run.
#define TF_SUM_LANES 8

__device__ __forceinline__ float tf_sum_lanes(float (*partial)[32], unsigned int x) {
    float total = 0.0f;
    for (unsigned int l = 0; l < TF_SUM_LANES; l++) {
        total += partial[l][x];
    }
    return total;
}

// sums[c] += sum over rows of m[r, c]: a bias's gradient (and the learned
// positions', with a window's rows as one row).
extern "C" __global__ void tf_column_sums(
    unsigned int rows,
    unsigned int cols,
    const float* __restrict__ m,     // device [rows, cols]
    float* __restrict__ sums)        // device [cols], accumulated
{
    __shared__ float partial[TF_SUM_LANES][32];
    const unsigned int col = blockIdx.x * 32 + threadIdx.x;
    float sum = 0.0f;
    if (col < cols) {
        for (unsigned int r = threadIdx.y; r < rows; r += TF_SUM_LANES) {
            sum += m[(unsigned long long)r * cols + col];
        }
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        sums[col] = sums[col] + tf_sum_lanes(partial, threadIdx.x);
    }
}

// dgain[c] += sum over rows of dy[r, c] xhat[r, c]: a LayerNorm gain's
// gradient, xhat recomputed from x and the row's stats. Blocks of
// (32, TF_SUM_LANES), as tf_column_sums.
extern "C" __global__ void tf_ln_gain_grad(
    unsigned int rows,
    unsigned int width,
    const float* __restrict__ dy,    // device [rows, width]
    const float* __restrict__ x,     // device [rows, width]
    const float* __restrict__ stats, // device [rows, 2]
    float* __restrict__ dgain)       // device [width], accumulated
{
    __shared__ float partial[TF_SUM_LANES][32];
    const unsigned int col = blockIdx.x * 32 + threadIdx.x;
    float sum = 0.0f;
    if (col < width) {
        for (unsigned int r = threadIdx.y; r < rows; r += TF_SUM_LANES) {
            const unsigned long long at = (unsigned long long)r * width + col;
            const float h = (x[at] - stats[2ull * r]) * stats[2ull * r + 1];
            sum += dy[at] * h;
        }
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < width) {
        dgain[col] = dgain[col] + tf_sum_lanes(partial, threadIdx.x);
    }
}

// The masked, scaled softmax backwards, in place: with the weights p of a
// row and the gradient dp of them, the gradient of the raw scores is
// scale p (dp - sum(dp p)); masked entries have p = 0 and get 0. One warp
// per row, blocks of (32, TF_ROWS).
extern "C" __global__ void tf_softmax_backward(
    unsigned long long rows,         // windows * heads * window
    unsigned int width,              // the window
    float scale,                     // 1 / sqrt(head_dim)
    const float* __restrict__ probs, // device [rows, width], the forward's weights
    float* __restrict__ d)           // device [rows, width]: dp in, dscores out
{
    const unsigned long long row = (unsigned long long)blockIdx.x * TF_ROWS + threadIdx.y;
    if (row >= rows) {
        return;
    }
    const unsigned int lane = threadIdx.x;
    const float* p = probs + row * width;
    float* g = d + row * width;
    float dot = 0.0f;
    for (unsigned int c = lane; c < width; c += 32) {
        dot += g[c] * p[c];
    }
    dot = tf_warp_sum(dot);
    for (unsigned int c = lane; c < width; c += 32) {
        g[c] = p[c] * (g[c] - dot) * scale;
    }
}

// The pooling backwards: dz[w, t, c] = dpooled[w, c] / steps (mean) or,
// for the last step only, dpooled[w, c] (last; the other steps get 0).
extern "C" __global__ void tf_pool_backward(
    unsigned long long n,             // windows * steps * width
    unsigned int steps,               // the window
    unsigned int width,               // d_model
    unsigned int mean,                // 1: mean, 0: last step
    const float* __restrict__ dpooled, // device [windows, width]
    float* __restrict__ dz)           // device [windows, steps, width]
{
    const unsigned long long i = tf_index();
    if (i >= n) {
        return;
    }
    const unsigned int c = (unsigned int)(i % width);
    const unsigned long long row = i / width;
    const unsigned long long w = row / steps;
    const unsigned int t = (unsigned int)(row % steps);
    const float g = dpooled[w * width + c];
    if (mean) {
        dz[i] = g / (float)steps;
    } else {
        dz[i] = t == steps - 1 ? g : 0.0f;
    }
}

// The optimisers' updates, as the CPU twin's apply_update (and the MLP's
// mlp_sgd / mlp_adam, copied here so the transformer's GPU path needs only
// this module and cuBLAS). SGD with momentum: v = momentum v + g;
// w -= lr v.
extern "C" __global__ void tf_sgd(
    unsigned long long n,             // trained parameters
    float lr,
    float momentum,
    const float* __restrict__ grad,   // device [n]
    float* __restrict__ velocity,     // device [n]
    float* __restrict__ param)        // device [n]
{
    const unsigned long long i = tf_index();
    if (i >= n) {
        return;
    }
    const float v = momentum * velocity[i] + grad[i];
    velocity[i] = v;
    param[i] = param[i] - lr * v;
}

// Adam: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// w -= lr (m c1) / (sqrt(v c2) + eps), c1 = 1 / (1 - b1^t) and
// c2 = 1 / (1 - b2^t) from the host.
extern "C" __global__ void tf_adam(
    unsigned long long n,             // trained parameters
    float lr,
    float beta1,
    float beta2,
    float eps,
    float correction1,
    float correction2,
    const float* __restrict__ grad,   // device [n]
    float* __restrict__ first,        // device [n], m
    float* __restrict__ second,       // device [n], v
    float* __restrict__ param)        // device [n]
{
    const unsigned long long i = tf_index();
    if (i >= n) {
        return;
    }
    const float g = grad[i];
    const float m = beta1 * first[i] + (1.0f - beta1) * g;
    const float v = beta2 * second[i] + (1.0f - beta2) * (g * g);
    first[i] = m;
    second[i] = v;
    param[i] = param[i] - lr * (m * correction1) / (sqrtf(v * correction2) + eps);
}
