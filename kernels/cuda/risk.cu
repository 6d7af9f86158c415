// The risk kernels: one thread per scenario writes that scenario's loss.
// The tail selection (top k) and the per-block sums for the mean run on the
// host over the copied losses, in the same code as the CPU twin
// (kernels/src/risk.rs), so the only GPU/CPU difference is in the losses.
#include "philox.cuh"

// a * b + c rounded twice, as the CPU twin computes it: NVRTC would fuse
// `sum += a * b` into one FMA, and the rounding would then differ from the
// host's. Unfused, the historical losses match the CPU bit for bit, and the
// Monte Carlo ones differ only through the normals (a few ulp of f32).
__device__ __forceinline__ double mul_add_unfused(double a, double b, double c) {
    return __dadd_rn(__dmul_rn(a, b), c);
}

// Monte Carlo: loss_j = base_loss - sum_k exposure_k z_jk, where
// exposure = L^T w (L the Cholesky factor of the covariance) and base_loss =
// -w.mu, both computed on the host in f64; this equals -w.(mu + L z). The
// normals are f32 (Philox stream j, draw block k / 4, Box-Muller on words
// (0, 1) and (2, 3)); the sum is f64.
extern "C" __global__ void risk_mc_losses(
    unsigned long long seed,
    unsigned long long first,       // index of the chunk's first scenario
    unsigned int count,             // scenarios in the chunk
    unsigned int n_assets,
    double base_loss,
    const double* __restrict__ exposure,  // device [n_assets]
    double* __restrict__ losses)          // device [count]
{
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) {
        return;
    }
    const unsigned long long scenario = first + i;
    const unsigned int k0 = (unsigned int)seed;
    const unsigned int k1 = (unsigned int)(seed >> 32);
    double sum = 0.0;
    for (unsigned int k = 0; k < n_assets; k += 4) {
        const philox_u4 r = philox4x32_10(philox_counter(scenario, k / 4), k0, k1);
        float z0, z1, z2, z3;
        philox_normal_pair(r.x, r.y, &z0, &z1);
        sum = mul_add_unfused(exposure[k], (double)z0, sum);
        if (k + 1 < n_assets) {
            sum = mul_add_unfused(exposure[k + 1], (double)z1, sum);
        }
        if (k + 2 < n_assets) {
            philox_normal_pair(r.z, r.w, &z2, &z3);
            sum = mul_add_unfused(exposure[k + 2], (double)z2, sum);
            if (k + 3 < n_assets) {
                sum = mul_add_unfused(exposure[k + 3], (double)z3, sum);
            }
        }
    }
    losses[i] = base_loss - sum;
}

// Historical: loss_t = -sum_i w_i r_ti over one row of returns, f64.
extern "C" __global__ void risk_hist_losses(
    unsigned int rows,
    unsigned int n_assets,
    const double* __restrict__ weights,  // device [n_assets]
    const double* __restrict__ returns,  // device [rows x n_assets], row-major
    double* __restrict__ losses)         // device [rows]
{
    const unsigned int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= rows) {
        return;
    }
    const double* row = returns + (size_t)t * n_assets;
    double sum = 0.0;
    for (unsigned int i = 0; i < n_assets; ++i) {
        sum = mul_add_unfused(weights[i], row[i], sum);
    }
    losses[t] = -sum;
}
