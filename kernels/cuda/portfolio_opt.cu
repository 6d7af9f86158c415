// The random search of portfolio_opt, in f32, over the candidates
// start..end: each block draws a tile of TILE Dirichlet(1) portfolios
// (candidate j = Philox stream j, draw block b gives assets 4b..4b+3) into
// shared memory, shrinks any over max_weight toward equal weights just
// enough to fit, evaluates excess return and variance, and writes its first
// best candidate (a NaN score counts as minus infinity). The host reduces
// the blocks' bests in block order. TILE depends on n only (the largest of
// 32, 16, 8, 4 whose weights fit the 48 KiB of shared memory every device
// gives a block), so every block of every run of a problem has the same
// one; and a candidate's score is the same sequence of operations whatever
// its block and its place in the tile, so a search cut into runs (a split
// task's shards) merges to the same best. The CPU twin is
// kernels/src/portfolio_opt/search.rs (search_cpu_range).
//
// The variance w'Sw of the tile's candidates is a product of the
// covariance (n x n, read from global memory: the L2 cache holds it) with
// the tile's weights (in shared memory): each block reads the covariance
// once per GROUP candidates (once per tile when TILE = GROUP, twice or four
// times from L1 for larger tiles), where each block used to read it once
// per 4. A warp takes ROWS rows at a time and its lanes the columns, so its
// loads are coalesced, each covariance value serves GROUP candidates and
// each weight read from shared memory serves ROWS rows.
#include "philox.cuh"

#define THREADS 256
#define WARPS (THREADS / 32)
// Rows of the covariance a warp takes at a time.
#define ROWS 4
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

// Scores the tile of TILE candidates from start + blockIdx.x * TILE.
// Candidates are taken GROUP at a time by a set of warps (GROUPS sets of
// SET warps): warp w works for group w / SET, on the row blocks w % SET,
// w % SET + SET, ...
template <int TILE>
__device__ __forceinline__ void random_search_tile(
    unsigned long long seed,
    unsigned int start,
    unsigned int end,
    unsigned int n,
    float max_weight,
    int max_sharpe,
    const float* __restrict__ covariance,  // device [n * n], row-major
    const float* __restrict__ excess,      // device [n], mu - risk_free
    unsigned int* __restrict__ best_index, // device [gridDim.x]
    float* __restrict__ best_score) {      // device [gridDim.x]
    constexpr int GROUP = TILE < 8 ? TILE : 8;
    constexpr int GROUPS = TILE / GROUP;
    constexpr int SET = WARPS / GROUPS;
    static_assert(GROUPS * GROUP == TILE && SET * GROUPS == WARPS, "tile shape");
    extern __shared__ float weights[];     // [TILE * n]: candidate c's at c * n
    __shared__ float scratch[TILE * WARPS];
    __shared__ float tile_return[TILE];
    const unsigned int first = start + blockIdx.x * TILE;
    const unsigned int k0 = (unsigned int)seed;
    const unsigned int k1 = (unsigned int)(seed >> 32);
    const unsigned int draws = (n + 3) / 4;

    // Exponential(1) draws; normalized they are Dirichlet(1).
    {
        float sum[TILE];
        float largest[TILE];
#pragma unroll
        for (int c = 0; c < TILE; ++c) {
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
        block_sum<TILE>(sum, scratch);
        block_max<TILE>(largest, scratch);

        // w = e / sum, then w <- (1 - t) w + t / n with the least t that
        // brings the largest weight down to max_weight (equal weights always
        // fit).
        const float equal = 1.0f / (float)n;
#pragma unroll
        for (int c = 0; c < TILE; ++c) {
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
    }
    __syncthreads();

    // Excess returns, kept in shared memory for the score.
    {
        float ret[TILE];
#pragma unroll
        for (int c = 0; c < TILE; ++c) {
            ret[c] = 0.0f;
        }
        for (unsigned int i = threadIdx.x; i < n; i += THREADS) {
            const float a = excess[i];
#pragma unroll
            for (int c = 0; c < TILE; ++c) {
                ret[c] += a * weights[c * n + i];
            }
        }
        block_sum<TILE>(ret, scratch);
        // Every thread holds every sum; thread 0 keeps them for the scores
        // (indices known at compile time keep ret in registers).
        if (threadIdx.x == 0) {
#pragma unroll
            for (int c = 0; c < TILE; ++c) {
                tile_return[c] = ret[c];
            }
        }
    }

    // Variances: lane l of a warp sums, for each of its rows i, the columns
    // k = l, l + 32, ... of S_ik w_k for the group's candidates, then adds
    // w_i times that to the candidate's partial; the partials are summed
    // over the lanes (shuffle tree) and over the set's warps (in order).
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int warp = threadIdx.x >> 5;
    const unsigned int group = warp / SET;
    const float* tile = weights + group * GROUP * n;
    float var[GROUP];
#pragma unroll
    for (int c = 0; c < GROUP; ++c) {
        var[c] = 0.0f;
    }
    for (unsigned int i0 = (warp % SET) * ROWS; i0 < n; i0 += SET * ROWS) {
        const float* row[ROWS];
        bool live[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            live[r] = i0 + r < n;
            row[r] = covariance + (size_t)(live[r] ? i0 + r : i0) * n;
        }
        float dot[ROWS][GROUP];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
#pragma unroll
            for (int c = 0; c < GROUP; ++c) {
                dot[r][c] = 0.0f;
            }
        }
        for (unsigned int k = lane; k < n; k += 32) {
            float s[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                s[r] = live[r] ? row[r][k] : 0.0f;
            }
#pragma unroll
            for (int c = 0; c < GROUP; ++c) {
                const float w = tile[c * n + k];
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    dot[r][c] += s[r] * w;
                }
            }
        }
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            if (live[r]) {
#pragma unroll
                for (int c = 0; c < GROUP; ++c) {
                    var[c] += tile[c * n + i0 + r] * dot[r][c];
                }
            }
        }
    }
#pragma unroll
    for (int c = 0; c < GROUP; ++c) {
        float x = var[c];
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            x += __shfl_down_sync(0xffffffffu, x, offset);
        }
        if (lane == 0) {
            // scratch[w * GROUP + c]: warp w's partial of its group's c-th.
            scratch[warp * GROUP + c] = x;
        }
    }
    __syncthreads();

    if (threadIdx.x == 0) {
        unsigned int best = 0;
        float best_value = NEG_INF;
        for (int c = 0; c < TILE; ++c) {
            if (first + c >= end) {
                break;
            }
            const int g = c / GROUP;
            float variance = 0.0f;
            for (int w = 0; w < SET; ++w) {
                variance += scratch[(g * SET + w) * GROUP + c % GROUP];
            }
            float score;
            if (max_sharpe) {
                score = variance > 0.0f ? tile_return[c] / sqrtf(variance) : NEG_INF;
            } else {
                score = -variance;
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

#define RANDOM_SEARCH(TILE)                                                                     \
    extern "C" __global__ void __launch_bounds__(THREADS, 2) random_search_##TILE(                 \
        unsigned long long seed, unsigned int start, unsigned int end, unsigned int n,         \
        float max_weight, int max_sharpe,                                                      \
        const float* __restrict__ covariance,  /* device [n * n], row-major */                 \
        const float* __restrict__ excess,      /* device [n] */                                \
        unsigned int* __restrict__ best_index, /* device [gridDim.x] */                        \
        float* __restrict__ best_score) {      /* device [gridDim.x] */                        \
        random_search_tile<TILE>(seed, start, end, n, max_weight, max_sharpe, covariance,      \
                                 excess, best_index, best_score);                              \
    }

RANDOM_SEARCH(4)
RANDOM_SEARCH(8)
RANDOM_SEARCH(16)
RANDOM_SEARCH(32)
