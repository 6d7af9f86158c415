// The risk kernels: one thread per scenario writes that scenario's loss;
// then, on the device, each block's sum (in scenario order, as the CPU
// twin sums) and a selection that keeps only the losses that can be in the
// tail, which alone cross to the host (kernels/src/risk/device_tail.rs
// drives it). The only GPU/CPU difference is in the losses.
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

// ---- The device-side reduction --------------------------------------------

#define RISK_BLOCK 4096u
#define RISK_DIGIT_BITS 11u
#define RISK_BINS (1u << RISK_DIGIT_BITS)

// A loss's key: unsigned integers in the order of Rust's f64::total_cmp
// (negative values have every bit flipped, the others their sign bit set).
__device__ __forceinline__ unsigned long long risk_key(double x) {
    const unsigned long long bits = (unsigned long long)__double_as_longlong(x);
    return (bits >> 63) ? ~bits : (bits | 0x8000000000000000ull);
}

// The sum of each block of RISK_BLOCK losses, in scenario order, from -0.0
// (Rust's f64 `Sum` starts there): the CPU twin's `iter().sum()` bit for
// bit. One warp per block: the lanes load 32 losses at a time and every
// lane adds them in order (all lanes hold the same sum).
extern "C" __global__ void risk_block_sums(
    unsigned int count,                  // losses in the chunk
    unsigned int n_blocks,               // blocks in the chunk (the last may be partial or empty)
    const double* __restrict__ losses,   // device [count]
    double* __restrict__ sums)           // device [n_blocks]
{
    const unsigned int block = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const unsigned int lane = threadIdx.x % 32;
    // Warp-uniform: every lane of a warp takes the same branch, so the
    // shuffles below see the whole warp.
    if (block >= n_blocks) {
        return;
    }
    const unsigned long long start = (unsigned long long)block * RISK_BLOCK;
    const unsigned long long end_block = start + RISK_BLOCK;
    const unsigned long long end = end_block < count ? end_block : count;
    double sum = -0.0;
    for (unsigned long long base = start; base < end; base += 32) {
        const unsigned long long i = base + lane;
        const double v = i < end ? losses[i] : 0.0;
        const unsigned int n = end - base < 32 ? (unsigned int)(end - base) : 32u;
        for (unsigned int t = 0; t < n; ++t) {
            sum = __dadd_rn(sum, __shfl_sync(0xffffffffu, v, t));
        }
    }
    if (lane == 0) {
        sums[block] = sum;
    }
}

// Counts, per value of the RISK_DIGIT_BITS bits below the `prefix_bits`
// top bits of the key, the losses whose key is at least `floor_key` and
// starts with `prefix` (any key when prefix_bits is 0). prefix_bits is a
// multiple of RISK_DIGIT_BITS, at most 33. A grid-stride loop; each CUDA
// block counts in shared memory, then adds its counts to `bins`.
extern "C" __global__ void risk_tail_histogram(
    unsigned int count,
    const double* __restrict__ losses,   // device [count]
    unsigned long long floor_key,
    unsigned long long prefix,
    unsigned int prefix_bits,
    unsigned int* __restrict__ bins)     // device [RISK_BINS], zeroed by the host
{
    __shared__ unsigned int local[RISK_BINS];
    for (unsigned int b = threadIdx.x; b < RISK_BINS; b += blockDim.x) {
        local[b] = 0;
    }
    __syncthreads();
    const unsigned int shift = 64u - prefix_bits - RISK_DIGIT_BITS;
    const unsigned int stride = gridDim.x * blockDim.x;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        const unsigned long long key = risk_key(losses[i]);
        if (key >= floor_key && (prefix_bits == 0 || (key >> (64u - prefix_bits)) == prefix)) {
            atomicAdd(&local[(unsigned int)(key >> shift) & (RISK_BINS - 1)], 1u);
        }
    }
    __syncthreads();
    for (unsigned int b = threadIdx.x; b < RISK_BINS; b += blockDim.x) {
        if (local[b] != 0) {
            atomicAdd(&bins[b], local[b]);
        }
    }
}

// Copies the losses whose key is at least `threshold_key` into
// `candidates` (in no particular order; the host sorts), up to `capacity`,
// counting them all in counters[0], and counts the keys at least
// `floor_key` in counters[1] (the host checks the first against the second).
// Each warp takes one slot range per step with one atomic. Launched with
// blockDim a multiple of 32.
extern "C" __global__ void risk_tail_select(
    unsigned int count,
    const double* __restrict__ losses,     // device [count]
    unsigned long long floor_key,
    unsigned long long threshold_key,
    unsigned int capacity,
    double* __restrict__ candidates,       // device [capacity]
    unsigned int* __restrict__ counters)   // device [2], zeroed by the host
{
    const unsigned int lane = threadIdx.x % 32;
    const unsigned int stride = gridDim.x * blockDim.x;
    unsigned int at_floor = 0;
    // `base` is the same for every thread of a CUDA block, so every lane of
    // a warp runs every step: the ballot and the shuffle see all 32.
    for (unsigned int base = blockIdx.x * blockDim.x; base < count; base += stride) {
        const unsigned int i = base + threadIdx.x;
        const bool valid = i < count;
        const double x = valid ? losses[i] : 0.0;
        const unsigned long long key = risk_key(x);
        const bool take = valid && key >= threshold_key;
        at_floor += (valid && key >= floor_key) ? 1u : 0u;
        const unsigned int mask = __ballot_sync(0xffffffffu, take);
        if (mask != 0) {
            const unsigned int leader = __ffs(mask) - 1;
            unsigned int first = 0;
            if (lane == leader) {
                first = atomicAdd(&counters[0], (unsigned int)__popc(mask));
            }
            first = __shfl_sync(0xffffffffu, first, leader);
            if (take) {
                const unsigned int slot = first + (unsigned int)__popc(mask & ((1u << lane) - 1u));
                if (slot < capacity) {
                    candidates[slot] = x;
                }
            }
        }
    }
    if (at_floor != 0) {
        atomicAdd(&counters[1], at_floor);
    }
}
