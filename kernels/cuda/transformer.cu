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
