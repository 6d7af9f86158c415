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

// Historical: loss_t = -sum_i w_i r_ti over one row of returns, f64, in the
// order of the CPU twin (Historical::loss in kernels/src/risk.rs): eight
// partial sums, lane l adding w_i r_ti for i = l, l + 8, l + 16, ... in
// order, from 0.0, unfused; then ((s0 + s4) + (s2 + s6)) + ((s1 + s5) +
// (s3 + s7)). Eight consecutive threads share a row, thread l of the eight
// being lane l (their loads of a row are adjacent), and that tree is the
// three shuffle steps of a halving reduction. So the losses equal the CPU's
// bit for bit.
#define HIST_LANES 8u

extern "C" __global__ void risk_hist_losses(
    unsigned int rows,
    unsigned int n_assets,
    const double* __restrict__ weights,  // device [n_assets]
    const double* __restrict__ returns,  // device [rows x n_assets], row-major
    double* __restrict__ losses)         // device [rows]
{
    // Launched with rows x HIST_LANES threads, blockDim a multiple of 32.
    const unsigned long long thread =
        (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long t = thread / HIST_LANES;
    const unsigned int lane = threadIdx.x % HIST_LANES;
    double sum = 0.0;
    if (t < rows) {
        const double* row = returns + t * n_assets;
        for (unsigned int i = lane; i < n_assets; i += HIST_LANES) {
            sum = mul_add_unfused(weights[i], row[i], sum);
        }
    }
    // Every thread of the warp takes part in the shuffles, rows past the end
    // with 0. Lanes 0-3: s_l + s_(l+4); lanes 0-1: that plus lane l + 2's;
    // lane 0: that plus lane 1's.
    sum = __dadd_rn(sum, __shfl_down_sync(0xffffffffu, sum, 4, HIST_LANES));
    sum = __dadd_rn(sum, __shfl_down_sync(0xffffffffu, sum, 2, HIST_LANES));
    sum = __dadd_rn(sum, __shfl_down_sync(0xffffffffu, sum, 1, HIST_LANES));
    if (lane == 0 && t < rows) {
        losses[t] = -sum;
    }
}
