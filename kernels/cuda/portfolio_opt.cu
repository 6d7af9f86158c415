// The random search of portfolio_opt, in f32, over the candidates
// start..end: each block draws CANDIDATES Dirichlet(1) portfolios (candidate
// j = Philox stream j, draw block b gives assets 4b..4b+3), shrinks any over
// max_weight toward equal weights just enough to fit, evaluates excess
// return and variance, and writes its first best candidate (a NaN score
// counts as minus infinity). The host reduces the blocks' bests in block
// order. A candidate's score depends on its index only, not on its block,
// so a search cut into runs (a split task's shards) merges to the same best.
// The CPU twin is kernels/src/portfolio_opt.rs (search_cpu_range).
#include "philox.cuh"

#define CANDIDATES 4
#define THREADS 256
#define WARPS (THREADS / 32)
// NVRTC has no math.h, so no INFINITY macro.
#define NEG_INF __int_as_float(0xff800000)

// Sums K values over the block, the same way in every thread and every run
// (fixed shuffle tree, then the warps' partials in warp order).
template <int K>
__device__ __forceinline__ void block_sum(float (&v)[K], float* scratch /* shared [K * WARPS] */) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int c = 0; c < K; ++c) {
        float x = v[c];
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            x += __shfl_down_sync(0xffffffffu, x, offset);
        }
        if (lane == 0) {
            scratch[c * WARPS + warp] = x;
        }
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < K; ++c) {
        float total = 0.0f;
        for (int k = 0; k < WARPS; ++k) {
            total += scratch[c * WARPS + k];
        }
        v[c] = total;
    }
    __syncthreads();
}

template <int K>
__device__ __forceinline__ void block_max(float (&v)[K], float* scratch /* shared [K * WARPS] */) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int c = 0; c < K; ++c) {
        float x = v[c];
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            x = fmaxf(x, __shfl_down_sync(0xffffffffu, x, offset));
        }
        if (lane == 0) {
            scratch[c * WARPS + warp] = x;
        }
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < K; ++c) {
        float m = scratch[c * WARPS];
        for (int k = 1; k < WARPS; ++k) {
            m = fmaxf(m, scratch[c * WARPS + k]);
        }
        v[c] = m;
    }
    __syncthreads();
}

extern "C" __global__ void __launch_bounds__(THREADS) random_search(
    unsigned long long seed,
    unsigned int start,                    // first candidate
    unsigned int end,                      // one past the last candidate
    unsigned int n,
    float max_weight,
    int max_sharpe,
    const float* __restrict__ covariance,  // device [n * n], row-major
    const float* __restrict__ excess,      // device [n], mu - risk_free
    unsigned int* __restrict__ best_index, // device [gridDim.x]
    float* __restrict__ best_score) {      // device [gridDim.x]
    extern __shared__ float weights[];     // [CANDIDATES * n]
    __shared__ float scratch[2 * CANDIDATES * WARPS];
    const unsigned int first = start + blockIdx.x * CANDIDATES;
    const unsigned int k0 = (unsigned int)seed;
    const unsigned int k1 = (unsigned int)(seed >> 32);
    const unsigned int draws = (n + 3) / 4;

    // Exponential(1) draws; normalized they are Dirichlet(1).
    float sum[CANDIDATES];
    float largest[CANDIDATES];
#pragma unroll
    for (int c = 0; c < CANDIDATES; ++c) {
        sum[c] = 0.0f;
        largest[c] = 0.0f;
        for (unsigned int b = threadIdx.x; b < draws; b += THREADS) {
            const philox_u4 r = philox4x32_10(philox_counter(first + c, b), k0, k1);
            const unsigned int words[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const unsigned int i = 4 * b + q;
                if (i < n) {
                    const float e = -logf(philox_u01(words[q]));
                    weights[c * n + i] = e;
                    sum[c] += e;
                    largest[c] = fmaxf(largest[c], e);
                }
            }
        }
    }
    block_sum<CANDIDATES>(sum, scratch);
    block_max<CANDIDATES>(largest, scratch);

    // w = e / sum, then w <- (1 - t) w + t / n with the least t that brings
    // the largest weight down to max_weight (equal weights always fit).
    const float equal = 1.0f / (float)n;
#pragma unroll
    for (int c = 0; c < CANDIDATES; ++c) {
        const float inv = 1.0f / sum[c];
        const float top = largest[c] * inv;
        float scale = inv;
        float shift = 0.0f;
        if (top > max_weight) {
            const float t = (top - max_weight) / (top - equal);
            scale = (1.0f - t) * inv;
            shift = t * equal;
        }
        for (unsigned int i = threadIdx.x; i < n; i += THREADS) {
            weights[c * n + i] = weights[c * n + i] * scale + shift;
        }
    }
    __syncthreads();

    // moments[c]: excess return; moments[CANDIDATES + c]: variance. A warp
    // takes a row of the covariance at a time, so its loads are coalesced
    // and each serves all the block's candidates.
    float moments[2 * CANDIDATES];
#pragma unroll
    for (int c = 0; c < 2 * CANDIDATES; ++c) {
        moments[c] = 0.0f;
    }
    for (unsigned int i = threadIdx.x; i < n; i += THREADS) {
        const float a = excess[i];
#pragma unroll
        for (int c = 0; c < CANDIDATES; ++c) {
            moments[c] += a * weights[c * n + i];
        }
    }
    const unsigned int lane = threadIdx.x & 31;
    for (unsigned int i = threadIdx.x >> 5; i < n; i += WARPS) {
        const float* row = covariance + (size_t)i * n;
        float dot[CANDIDATES];
#pragma unroll
        for (int c = 0; c < CANDIDATES; ++c) {
            dot[c] = 0.0f;
        }
        for (unsigned int k = lane; k < n; k += 32) {
            const float s = row[k];
#pragma unroll
            for (int c = 0; c < CANDIDATES; ++c) {
                dot[c] += s * weights[c * n + k];
            }
        }
#pragma unroll
        for (int c = 0; c < CANDIDATES; ++c) {
            moments[CANDIDATES + c] += weights[c * n + i] * dot[c];
        }
    }
    block_sum<2 * CANDIDATES>(moments, scratch);

    if (threadIdx.x == 0) {
        unsigned int best = 0;
        float best_value = NEG_INF;
#pragma unroll
        for (int c = 0; c < CANDIDATES; ++c) {
            if (first + c >= end) {
                break;
            }
            const float var = moments[CANDIDATES + c];
            float score;
            if (max_sharpe) {
                score = var > 0.0f ? moments[c] / sqrtf(var) : NEG_INF;
            } else {
                score = -var;
            }
            if (score != score) {
                score = NEG_INF;
            }
            if (c == 0 || score > best_value) {
                best = c;
                best_value = score;
            }
        }
        best_index[blockIdx.x] = first + best;
        best_score[blockIdx.x] = best_value;
    }
}
