// Monte Carlo paths of geometric Brownian motion, the GPU side of
// kernels/src/monte_carlo.rs (see there for the conventions).
//
// One CUDA block per 4096-path block: 1024 threads, four paths each (path =
// block * 4096 + k * 1024 + thread). Each path walks its log-price in f32,
// with the same operations as the CPU twin (no fused multiply-add, so the
// walks differ only by the ulps of logf/sincospif/expf). Payoffs go to f64;
// each thread sums its paths in order, then the block reduces with warp
// shuffles in a fixed order and writes one set of sums: reproducible for a
// fixed block size. The histogram counts with integer atomics (exact).
#include "philox.cuh"

#define MC_BLOCK_PATHS 4096
#define MC_THREADS 1024
#define MC_WARPS (MC_THREADS / 32)
#define MC_PAYOFFS 4
#define MC_SUMS (2 * MC_PAYOFFS + 1)
#define MC_BINS 4096

__device__ __forceinline__ double mc_warp_sum(double v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Walks one step: x + (drift + vol z), rounded as the CPU rounds it.
__device__ __forceinline__ void mc_step(float z, float drift, float vol, float* x, float* sum_log, float* sum_price) {
    *x = __fadd_rn(*x, __fadd_rn(drift, __fmul_rn(vol, z)));
    *sum_log = __fadd_rn(*sum_log, *x);
    *sum_price = __fadd_rn(*sum_price, expf(*x));
}

extern "C" __global__ void __launch_bounds__(MC_THREADS) gbm_paths(
    unsigned long long seed,
    unsigned long long n_paths,      // every path of the task
    unsigned long long first_block,  // the 4096-path block of CUDA block 0
    unsigned int steps,
    float x0,                        // ln s0
    float drift,                     // (r - q - sigma^2 / 2) dt
    float vol,                       // sigma sqrt(dt)
    double strike,
    double hist_lower,               // log-price of the first bin's left edge
    double hist_inv_width,           // bins per unit of log-price
    double* sums,                    // device [gridDim.x * MC_SUMS]: per block
    unsigned long long* histogram)   // device [MC_BINS + 2]: under, bins, over
{
    __shared__ double warp_sums[MC_SUMS][MC_WARPS];
    const unsigned int k0 = (unsigned int)seed;
    const unsigned int k1 = (unsigned int)(seed >> 32);
    const unsigned long long block = first_block + blockIdx.x;
    const double n_steps = (double)steps;

    double acc[MC_SUMS];
#pragma unroll
    for (int q = 0; q < MC_SUMS; ++q) {
        acc[q] = 0.0;
    }

    for (int k = 0; k < MC_BLOCK_PATHS / MC_THREADS; ++k) {
        const unsigned long long path = block * MC_BLOCK_PATHS + (unsigned long long)(k * MC_THREADS + threadIdx.x);
        if (path >= n_paths) {
            break;
        }
        float x = x0;
        float sum_log = 0.0f;
        float sum_price = 0.0f;
        for (unsigned int step = 0; step < steps; step += 4) {
            const philox_u4 w = philox4x32_10(philox_counter(path, step / 4), k0, k1);
            const unsigned int left = steps - step;
            float z0, z1;
            philox_normal_pair(w.x, w.y, &z0, &z1);
            mc_step(z0, drift, vol, &x, &sum_log, &sum_price);
            if (left > 1) {
                mc_step(z1, drift, vol, &x, &sum_log, &sum_price);
            }
            if (left > 2) {
                float z2, z3;
                philox_normal_pair(w.z, w.w, &z2, &z3);
                mc_step(z2, drift, vol, &x, &sum_log, &sum_price);
                if (left > 3) {
                    mc_step(z3, drift, vol, &x, &sum_log, &sum_price);
                }
            }
        }
        const double terminal = (double)expf(x);
        const double average = (double)sum_price / n_steps;
        const double geometric = exp((double)sum_log / n_steps);
        const double payoff[MC_PAYOFFS] = {
            fmax(terminal - strike, 0.0),
            fmax(strike - terminal, 0.0),
            fmax(average - strike, 0.0),
            fmax(geometric - strike, 0.0),
        };
#pragma unroll
        for (int q = 0; q < MC_PAYOFFS; ++q) {
            acc[q] += payoff[q];
            acc[MC_PAYOFFS + q] = __dadd_rn(acc[MC_PAYOFFS + q], __dmul_rn(payoff[q], payoff[q]));
        }
        acc[2 * MC_PAYOFFS] += terminal;

        const double position = ((double)x - hist_lower) * hist_inv_width;
        unsigned int slot;
        if (!(position >= 0.0)) {
            slot = 0;
        } else if (position >= (double)MC_BINS) {
            slot = MC_BINS + 1;
        } else {
            slot = 1 + (unsigned int)position;
        }
        atomicAdd(&histogram[slot], 1ULL);
    }

    const unsigned int lane = threadIdx.x % 32;
    const unsigned int warp = threadIdx.x / 32;
#pragma unroll
    for (int q = 0; q < MC_SUMS; ++q) {
        const double v = mc_warp_sum(acc[q]);
        if (lane == 0) {
            warp_sums[q][warp] = v;
        }
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
        for (int q = 0; q < MC_SUMS; ++q) {
            const double v = mc_warp_sum(warp_sums[q][lane]);
            if (lane == 0) {
                sums[(unsigned long long)blockIdx.x * MC_SUMS + q] = v;
            }
        }
    }
}
