// Monte Carlo paths of geometric Brownian motion, the GPU side of
// kernels/src/monte_carlo.rs (see there for the conventions).
//
// The sums of a 4096-path block are defined by a fixed reduction over 1024
// "lanes" of four paths each (lane l takes paths l, l + 1024, l + 2048,
// l + 3072 of the block, in that order, from 0.0), then a warp-shuffle tree
// over each 32 consecutive lanes, then the same tree over those 32 warp
// sums. That order is what makes the GPU's sums reproducible; it is kept
// bit for bit whatever the launch shape. The launch runs one thread per
// path (so 1M paths fill the SMs in many short waves, not five long ones
// with a fifth nearly empty): gbm_paths gives each CUDA block one warp of
// lanes, 128 threads (thread k * 32 + j walks path k * 1024 + lane of lane
// j), adds each lane's four paths in order in shared memory and writes the
// warp's sums; gbm_block_sums then adds a block's 32 warp sums with the
// same tree. Each path walks its log-price in f32, with the same operations
// as the CPU twin (no fused multiply-add, so the walks differ only by the
// ulps of logf/sincospif/expf). The histogram counts with integer atomics
// (exact).
#include "philox.cuh"

#define MC_BLOCK_PATHS 4096
#define MC_LANES 1024
#define MC_PATHS_PER_LANE (MC_BLOCK_PATHS / MC_LANES)
#define MC_WARPS (MC_LANES / 32)
#define MC_THREADS (32 * MC_PATHS_PER_LANE)
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

// Launched with MC_THREADS threads per block and MC_WARPS blocks per
// 4096-path block. At least 8 blocks (1024 threads) per SM: at most 64
// registers a thread.
extern "C" __global__ void __launch_bounds__(MC_THREADS, 8) gbm_paths(
    unsigned long long seed,
    unsigned long long n_paths,      // every path of the task
    unsigned long long first_block,  // the 4096-path block of CUDA blocks 0..MC_WARPS
    unsigned int steps,
    float x0,                        // ln s0
    float drift,                     // (r - q - sigma^2 / 2) dt
    float vol,                       // sigma sqrt(dt)
    double strike,
    double hist_lower,               // log-price of the first bin's left edge
    double hist_inv_width,           // bins per unit of log-price
    double* __restrict__ warp_sums,  // device [gridDim.x * MC_SUMS]: per warp of lanes
    unsigned long long* histogram)   // device [MC_BINS + 2]: under, bins, over
{
    // The values of the paths of threads 32..MC_THREADS, for warp 0 to add.
    __shared__ double later[MC_PATHS_PER_LANE - 1][MC_SUMS][32];
    const unsigned int k0 = (unsigned int)seed;
    const unsigned int k1 = (unsigned int)(seed >> 32);
    const unsigned long long block = first_block + blockIdx.x / MC_WARPS;
    const unsigned int lane_warp = blockIdx.x % MC_WARPS;
    const unsigned int j = threadIdx.x % 32;
    const unsigned int k = threadIdx.x / 32;
    const unsigned int lane = lane_warp * 32 + j;
    const unsigned long long block_first = block * MC_BLOCK_PATHS;
    const unsigned long long path = block_first + (unsigned long long)(k * MC_LANES + lane);
    const double n_steps = (double)steps;

    double value[MC_SUMS];
    if (path < n_paths) {
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
            value[q] = payoff[q];
            value[MC_PAYOFFS + q] = __dmul_rn(payoff[q], payoff[q]);
        }
        value[2 * MC_PAYOFFS] = terminal;

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
    } else {
#pragma unroll
        for (int q = 0; q < MC_SUMS; ++q) {
            value[q] = 0.0;
        }
    }
    if (k > 0) {
#pragma unroll
        for (int q = 0; q < MC_SUMS; ++q) {
            later[k - 1][q][j] = value[q];
        }
    }
    __syncthreads();
    if (k == 0) {
        // Lane `lane`'s sums: from 0.0, its paths in order, each added only
        // if it exists (the paths past n_paths are a suffix of the four).
        double acc[MC_SUMS];
#pragma unroll
        for (int q = 0; q < MC_SUMS; ++q) {
            acc[q] = 0.0;
        }
        for (unsigned int p = 0; p < MC_PATHS_PER_LANE; ++p) {
            if (block_first + (unsigned long long)(p * MC_LANES + lane) >= n_paths) {
                break;
            }
#pragma unroll
            for (int q = 0; q < MC_SUMS; ++q) {
                acc[q] = __dadd_rn(acc[q], p == 0 ? value[q] : later[p - 1][q][j]);
            }
        }
#pragma unroll
        for (int q = 0; q < MC_SUMS; ++q) {
            const double v = mc_warp_sum(acc[q]);
            if (j == 0) {
                warp_sums[(unsigned long long)blockIdx.x * MC_SUMS + q] = v;
            }
        }
    }
}

// A block's sums from its MC_WARPS warp sums, with the tree of
// mc_warp_sum: one warp per 4096-path block, 8 warps per CUDA block.
extern "C" __global__ void gbm_block_sums(
    unsigned int n_blocks,                  // 4096-path blocks
    const double* __restrict__ warp_sums,   // device [n_blocks * MC_WARPS * MC_SUMS]
    double* __restrict__ sums)              // device [n_blocks * MC_SUMS]
{
    const unsigned int b = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const unsigned int j = threadIdx.x % 32;
    // The whole warp takes the same branch: the shuffles see all 32 lanes.
    if (b >= n_blocks) {
        return;
    }
#pragma unroll
    for (int q = 0; q < MC_SUMS; ++q) {
        const double v = mc_warp_sum(warp_sums[((unsigned long long)b * MC_WARPS + j) * MC_SUMS + q]);
        if (j == 0) {
            sums[(unsigned long long)b * MC_SUMS + q] = v;
        }
    }
}
