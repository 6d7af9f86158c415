// The MLP's element-wise and reduction kernels. The matrix products run in
// cuBLAS (kernels/src/mlp_gpu.rs); these kernels do what lies between them:
// input normalisation, bias plus activation, the MSE gradient, the
// activation derivative, column sums (bias gradients and the loss) and the
// optimiser updates. All matrices are row-major: element (r, c) of a
// rows x cols matrix is at r * cols + c.
//
// Every reduction sums in a fixed order that depends only on the shape, so
// a training run gives the same bits on every run on the same GPU model.

#define ACT_NONE 0u
#define ACT_RELU 1u
#define ACT_TANH 2u

// The flat index of this thread over a one-dimensional grid.
__device__ __forceinline__ unsigned long long flat_index() {
    return (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
}

// out = (x - mean) / stdev, per feature.
extern "C" __global__ void mlp_normalize(
    unsigned long long n,            // rows * features
    unsigned int features,
    const float* __restrict__ x,     // device [rows, features]
    const float* __restrict__ mean,  // device [features]
    const float* __restrict__ stdev, // device [features]
    float* __restrict__ out)         // device [rows, features]
{
    const unsigned long long i = flat_index();
    if (i >= n) {
        return;
    }
    const unsigned int f = (unsigned int)(i % features);
    out[i] = (x[i] - mean[f]) / stdev[f];
}

// y = act(y + bias), per column. The GEMM wrote x W^T into y.
extern "C" __global__ void mlp_bias_activation(
    unsigned long long n,            // rows * cols
    unsigned int cols,
    unsigned int activation,         // ACT_*
    const float* __restrict__ bias,  // device [cols]
    float* __restrict__ y)           // device [rows, cols]
{
    const unsigned long long i = flat_index();
    if (i >= n) {
        return;
    }
    const float z = y[i] + bias[(unsigned int)(i % cols)];
    float a = z;
    if (activation == ACT_RELU) {
        a = z > 0.0f ? z : 0.0f;
    } else if (activation == ACT_TANH) {
        a = tanhf(z);
    }
    y[i] = a;
}

// grad = scale * (pred - target) (the MSE gradient, `scale` = 2 / (rows *
// outputs)), and squared = (pred - target)^2 for the loss.
extern "C" __global__ void mlp_mse_gradient(
    unsigned long long n,              // rows * outputs
    float scale,
    const float* __restrict__ pred,    // device [rows, outputs]
    const float* __restrict__ target,  // device [rows, outputs]
    float* __restrict__ grad,          // device [rows, outputs]
    float* __restrict__ squared)       // device [rows, outputs]
{
    const unsigned long long i = flat_index();
    if (i >= n) {
        return;
    }
    const float diff = pred[i] - target[i];
    grad[i] = scale * diff;
    squared[i] = diff * diff;
}

// d *= act'(z), written with the activation's output a = act(z): ReLU'
// is 1 where a > 0 (0 at z = 0), tanh' is 1 - a^2.
extern "C" __global__ void mlp_activation_backward(
    unsigned long long n,               // rows * cols
    unsigned int activation,            // ACT_RELU or ACT_TANH
    const float* __restrict__ output,   // device [rows, cols], a
    float* __restrict__ grad)           // device [rows, cols], d
{
    const unsigned long long i = flat_index();
    if (i >= n) {
        return;
    }
    const float a = output[i];
    if (activation == ACT_RELU) {
        grad[i] = a > 0.0f ? grad[i] : 0.0f;
    } else if (activation == ACT_TANH) {
        grad[i] = grad[i] * (1.0f - a * a);
    }
}

// The lanes that share one column in mlp_column_sums.
#define SUM_LANES 8

// sums[c] = sum over rows of m[r, c]. Block (32, SUM_LANES): thread (x, l)
// owns column blockIdx.x * 32 + x and adds rows l, l + 8, l + 16, ... in
// order; the 8 partial sums are then added in the fixed tree
// ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)). The 32 columns of a
// warp read consecutive addresses of one row.
extern "C" __global__ void mlp_column_sums(
    unsigned int rows,
    unsigned int cols,
    const float* __restrict__ m,  // device [rows, cols]
    float* __restrict__ sums)     // device [cols]
{
    __shared__ float partial[SUM_LANES][32];
    const unsigned int col = blockIdx.x * 32 + threadIdx.x;
    float sum = 0.0f;
    if (col < cols) {
        for (unsigned int r = threadIdx.y; r < rows; r += SUM_LANES) {
            sum += m[(unsigned long long)r * cols + col];
        }
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        const float (*s)[32] = partial;
        const unsigned int x = threadIdx.x;
        sums[col] = ((s[0][x] + s[4][x]) + (s[2][x] + s[6][x]))
                  + ((s[1][x] + s[5][x]) + (s[3][x] + s[7][x]));
    }
}

// SGD with momentum, as PyTorch: v = momentum * v + g; w -= lr * v.
extern "C" __global__ void mlp_sgd(
    unsigned long long n,             // parameters
    float lr,
    float momentum,
    const float* __restrict__ grad,   // device [n]
    float* __restrict__ velocity,     // device [n]
    float* __restrict__ param)        // device [n]
{
    const unsigned long long i = flat_index();
    if (i >= n) {
        return;
    }
    const float v = momentum * velocity[i] + grad[i];
    velocity[i] = v;
    param[i] = param[i] - lr * v;
}

// Adam, as the CPU twin (kernels/src/mlp.rs): m = b1 m + (1 - b1) g;
// v = b2 v + (1 - b2) g^2; w -= lr (m c1) / (sqrt(v c2) + eps), where
// c1 = 1 / (1 - b1^t) and c2 = 1 / (1 - b2^t) come from the host.
extern "C" __global__ void mlp_adam(
    unsigned long long n,             // parameters
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
    const unsigned long long i = flat_index();
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
// dst row r = src row indices[r]: a shuffled mini-batch taken from the
// training set, which stays on the device for the whole run.
extern "C" __global__ void mlp_gather_rows(
    unsigned long long n,                   // rows * cols
    unsigned int cols,
    const unsigned int* __restrict__ rows,  // device [rows], source row of each
    const float* __restrict__ src,          // device [samples, cols]
    float* __restrict__ dst)                // device [rows, cols]
{
    const unsigned long long i = flat_index();
    if (i >= n) {
        return;
    }
    const unsigned long long r = i / cols;
    const unsigned int c = (unsigned int)(i % cols);
    dst[i] = src[(unsigned long long)rows[r] * cols + c];
}
