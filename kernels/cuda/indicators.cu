// Technical indicators over close prices, in f64: one warp per (indicator,
// group of 32 consecutive series), one lane per series, each lane running
// the same single pass as the CPU twin in kernels/src/indicators.rs,
// operation for operation. Products go through __dmul_rn so NVRTC cannot
// fuse them with an addition into an FMA (which rounds once instead of
// twice and would break bit-for-bit parity; the options also say
// --fmad=false); division and sqrt are IEEE-rounded in double precision.
//
// Layout, as the wire has it: closes of every series concatenated; series
// s spans closes[offsets[s] .. offsets[s+1]]. Its output lines lie at
// out[offsets[s] * n_lines + line * len ...], `len` values each.
// codes[5 j ..]: kind (0 SMA, 1 EMA, 2 RSI, 3 MACD, 4 Bollinger), three
// integer parameters, the indicator's first line.
//
// Each lane's series is contiguous, so a lane-per-series load or store
// would touch 32 different sectors. The warp moves BATCH steps of its 32
// series at a time instead, through shared memory: eight loads of 32
// lanes, each lane v taking step v % 8 of series v / 8 (+ 4 per load), so
// that a load reads 4 runs of 64 contiguous bytes; the lanes then run their
// recurrence over the staged steps and stage their outputs, which the warp
// stores back the same way, a line at a time.

typedef unsigned long long u64;
typedef unsigned int u32;

// Steps a warp stages at a time. It also keeps BATCH independent loads in
// flight per lane before the recurrences consume them (a request's warps
// are few: they are the parallelism the recurrences allow).
#define BATCH 8
// A staged row: BATCH values and a pad, so that the lanes reading their own
// rows hit different banks.
#define PITCH (BATCH + 1)
// A staged tile: a row per lane.
#define TILE (32 * PITCH)
// Shared memory of a warp, in doubles: the closes, the closes `lag` steps
// back and three output lines, then its series' offsets (32 u64) and
// lengths (32 u32). indicators.rs sizes the launch with it.
#define WARP_DOUBLES (5 * TILE + 32 + 16)

__device__ __forceinline__ double nan_value() {
    return __longlong_as_double(0x7ff8000000000000LL);
}

// The window sums of SMA and Bollinger: recomputed from scratch at t = n-1,
// 2n-1, ... (the CPU twin's fresh_window) as the sum, left to right from
// 0.0, of the n closes since the last fresh window, which `block`
// accumulates as they stream by; rolled forward in between.
struct WindowSum {
    u32 n;
    u32 phase;     // t + 1 - n modulo n once t >= n - 1
    double block;  // the closes since the last fresh window, summed
    double sum;

    // Takes x[t]; true when t is a fresh window, whose sum is `block`'s.
    __device__ __forceinline__ bool take(u32 t, double x) {
        block = block + x;
        if (t + 1 < n) {
            return false;
        }
        const bool fresh = phase == 0;
        phase = phase + 1 == n ? 0 : phase + 1;
        if (fresh) {
            sum = block;
            block = 0.0;
        }
        return fresh;
    }
};

// A lane's staged outputs: line l of step i at o[l * TILE + i].
#define OUT(l, i) o[(l) * TILE + (i)]

struct Sma {
    bool valid;
    double nf;
    WindowSum window;

    __device__ __forceinline__ void operator()(u32 t, int i, double x, double old, double* o) {
        if (!valid) {
            OUT(0, i) = nan_value();
            return;
        }
        const bool fresh = window.take(t, x);
        if (t + 1 < window.n) {
            OUT(0, i) = nan_value();
            return;
        }
        if (!fresh) {
            window.sum = window.sum + (x - old);
        }
        OUT(0, i) = window.sum / nf;
    }
};

struct Ema {
    bool valid;
    u32 n;
    double alpha;
    double beta;
    double e;

    __device__ __forceinline__ void operator()(u32 t, int i, double x, double, double* o) {
        if (!valid) {
            OUT(0, i) = nan_value();
            return;
        }
        if (t < n) {
            e = e + x;
            if (t + 1 < n) {
                OUT(0, i) = nan_value();
                return;
            }
            e = e / (double)n;
        } else {
            e = __dadd_rn(__dmul_rn(alpha, x), __dmul_rn(beta, e));
        }
        OUT(0, i) = e;
    }
};

struct Rsi {
    bool valid;
    u32 n;
    double nf;
    double keep;
    double previous;
    double gain;
    double loss;

    __device__ __forceinline__ void operator()(u32 t, int i, double x, double, double* o) {
        if (!valid || t == 0) {
            previous = x;
            OUT(0, i) = nan_value();
            return;
        }
        const double d = x - previous;
        previous = x;
        const double g = d > 0.0 ? d : 0.0;
        const double l = d < 0.0 ? -d : 0.0;
        if (t < n) {
            gain = gain + g;
            loss = loss + l;
            OUT(0, i) = nan_value();
            return;
        }
        if (t == n) {
            gain = (gain + g) / nf;
            loss = (loss + l) / nf;
        } else {
            gain = __dadd_rn(__dmul_rn(gain, keep), g) / nf;
            loss = __dadd_rn(__dmul_rn(loss, keep), l) / nf;
        }
        OUT(0, i) = loss == 0.0 ? 100.0 : 100.0 - 100.0 / (1.0 + gain / loss);
    }
};

struct Macd {
    bool valid;
    u32 fast;
    u32 slow;
    u32 signal;
    double alpha_fast;
    double alpha_slow;
    double alpha_signal;
    double beta_fast;
    double beta_slow;
    double beta_signal;
    double ema_fast;
    double ema_slow;
    double sig;

    __device__ __forceinline__ void operator()(u32 t, int i, double x, double, double* o) {
        const double nan = nan_value();
        if (!valid) {
            OUT(0, i) = nan;
            OUT(1, i) = nan;
            OUT(2, i) = nan;
            return;
        }
        if (t < fast) {
            ema_fast = ema_fast + x;
            if (t == fast - 1) {
                ema_fast = ema_fast / (double)fast;
            }
        } else {
            ema_fast = __dadd_rn(__dmul_rn(alpha_fast, x), __dmul_rn(beta_fast, ema_fast));
        }
        if (t < slow) {
            ema_slow = ema_slow + x;
            if (t < slow - 1) {
                OUT(0, i) = nan;
                OUT(1, i) = nan;
                OUT(2, i) = nan;
                return;
            }
            ema_slow = ema_slow / (double)slow;
        } else {
            ema_slow = __dadd_rn(__dmul_rn(alpha_slow, x), __dmul_rn(beta_slow, ema_slow));
        }
        const double value = ema_fast - ema_slow;
        OUT(0, i) = value;
        const u32 k = t + 1 - slow;
        if (k < signal) {
            sig = sig + value;
            if (k < signal - 1) {
                OUT(1, i) = nan;
                OUT(2, i) = nan;
                return;
            }
            sig = sig / (double)signal;
        } else {
            sig = __dadd_rn(__dmul_rn(alpha_signal, value), __dmul_rn(beta_signal, sig));
        }
        OUT(1, i) = sig;
        OUT(2, i) = value - sig;
    }
};

struct Bollinger {
    bool valid;
    const double* x;  // the lane's series, for the second pass over a window
    double nf;
    double k;
    WindowSum window;
    double mean;
    double m2;

    __device__ __forceinline__ void operator()(u32 t, int i, double close, double old, double* o) {
        const double nan = nan_value();
        if (!valid) {
            OUT(0, i) = nan;
            OUT(1, i) = nan;
            OUT(2, i) = nan;
            return;
        }
        const bool fresh = window.take(t, close);
        if (t + 1 < window.n) {
            OUT(0, i) = nan;
            OUT(1, i) = nan;
            OUT(2, i) = nan;
            return;
        }
        if (fresh) {
            mean = window.sum / nf;
            // The window's squared deviations, left to right (the CPU
            // twin's window_m2), from the lane's own series: the warp
            // staged these closes moments ago, so the caches hold them.
            m2 = 0.0;
            for (u32 s = t + 1 - window.n; s <= t; ++s) {
                const double d = x[s] - mean;
                m2 = __dadd_rn(m2, __dmul_rn(d, d));
            }
        } else {
            const double old_mean = mean;
            window.sum = window.sum + (close - old);
            mean = window.sum / nf;
            m2 = __dadd_rn(m2, __dmul_rn(close - old, (close - mean) + (old - old_mean)));
        }
        const double sd = sqrt((m2 > 0.0 ? m2 : 0.0) / nf);
        const double width = __dmul_rn(k, sd);
        OUT(0, i) = mean;
        OUT(1, i) = mean + width;
        OUT(2, i) = mean - width;
    }
};

// The warp's 32 series (a lane's own at row `lane` of each tile).
struct Group {
    const double* __restrict__ closes;
    double* __restrict__ out;
    u32 n_lines;
    u32 first_line;     // the indicator's first line
    u32 longest;        // the longest of the group's series
    double* in;         // shared [TILE]: the closes of BATCH steps
    double* back;       // shared [TILE]: the closes `lag` steps before them
    double* staged;     // shared [3 TILE]: the outputs of BATCH steps
    const u64* offset;  // shared [32]: each series' first close
    const u32* len;     // shared [32]: each series' length (0 past the last)
};

// Runs step(t, i, x[t], x[t - lag], outputs) over every lane's series in
// order, t = t0 + i (x[t - lag] only when LAGGED and t >= lag, else 0), and
// stores the LINES lines it stages. Every lane of the warp takes part in
// every batch (the __syncwarp), whatever its series' length.
template <bool LAGGED, int LINES, class Step>
__device__ __forceinline__ void stream(const Group& g, u32 lag, Step& step) {
    const u32 lane = threadIdx.x & 31;
    const u32 mine = g.len[lane];
    for (u32 t0 = 0; t0 < g.longest; t0 += BATCH) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const u32 v = lane + 32 * j;
            const u32 m = v / BATCH;
            const u32 q = v % BATCH;
            const u32 t = t0 + q;
            const bool here = t < g.len[m];
            g.in[m * PITCH + q] = here ? g.closes[g.offset[m] + t] : 0.0;
            if (LAGGED) {
                g.back[m * PITCH + q] = here && t >= lag ? g.closes[g.offset[m] + t - lag] : 0.0;
            }
        }
        __syncwarp();
        double* o = g.staged + lane * PITCH;
#pragma unroll
        for (int i = 0; i < BATCH; ++i) {
            if (t0 + i < mine) {
                step(t0 + i, i, g.in[lane * PITCH + i], LAGGED ? g.back[lane * PITCH + i] : 0.0, o);
            }
        }
        __syncwarp();
#pragma unroll
        for (int l = 0; l < LINES; ++l) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const u32 v = lane + 32 * j;
                const u32 m = v / BATCH;
                const u32 q = v % BATCH;
                const u32 t = t0 + q;
                if (t < g.len[m]) {
                    const u64 at = g.offset[m] * g.n_lines + (u64)(g.first_line + l) * g.len[m] + t;
                    g.out[at] = g.staged[l * TILE + m * PITCH + q];
                }
            }
        }
        __syncwarp();
    }
}

extern "C" __global__ void indicators_run(
    const double* __restrict__ closes,       // device [total]
    const u64* __restrict__ offsets,         // device [n_series + 1]
    unsigned int n_series,
    const unsigned int* __restrict__ codes,  // device [5 n_indicators]
    const double* __restrict__ ks,           // device [n_indicators]
    unsigned int n_indicators,
    unsigned int n_lines,
    double* __restrict__ out                 // device [total n_lines]
) {
    extern __shared__ double shared[];       // [WARP_DOUBLES] per warp
    // Neighbouring warps take the same indicator on neighbouring groups, so
    // a warp runs one code path.
    const u32 n_groups = (n_series + 31) / 32;
    const u64 warp = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const u32 lane = threadIdx.x & 31;
    if (warp >= (u64)n_groups * n_indicators) {
        return;  // the whole warp: the condition is the warp's
    }
    const u32 j = (u32)(warp / n_groups);
    const u32 first = 32 * (u32)(warp % n_groups);
    double* mine = shared + (threadIdx.x >> 5) * WARP_DOUBLES;
    u64* offset = (u64*)(mine + 5 * TILE);
    u32* len = (u32*)(mine + 5 * TILE + 32);
    const u32 s = first + lane;
    offset[lane] = s < n_series ? offsets[s] : 0;
    len[lane] = s < n_series ? (u32)(offsets[s + 1] - offsets[s]) : 0;
    u32 longest = len[lane];
#pragma unroll
    for (int step = 16; step > 0; step >>= 1) {
        const u32 other = __shfl_xor_sync(0xffffffffu, longest, step);
        longest = other > longest ? other : longest;
    }
    __syncwarp();
    const unsigned int* code = codes + 5 * j;
    Group g = {closes, out, n_lines, code[4], longest, mine, mine + TILE, mine + 2 * TILE,
               offset, len};
    const u32 length = len[lane];
    switch (code[0]) {
    case 0: {
        const u32 n = code[1];
        Sma step = {n != 0 && n <= length, (double)n, {n, 0, 0.0, 0.0}};
        stream<true, 1>(g, n, step);
        break;
    }
    case 1: {
        const u32 n = code[1];
        const double alpha = 2.0 / ((double)n + 1.0);
        Ema step = {n != 0 && n <= length, n, alpha, 1.0 - alpha, 0.0};
        stream<false, 1>(g, 0, step);
        break;
    }
    case 2: {
        const u32 n = code[1];
        Rsi step = {n != 0 && n < length, n, (double)n, (double)(n - 1), 0.0, 0.0, 0.0};
        stream<false, 1>(g, 0, step);
        break;
    }
    case 3: {
        const u32 fast = code[1];
        const u32 slow = code[2];
        const u32 signal = code[3];
        const double alpha_fast = 2.0 / ((double)fast + 1.0);
        const double alpha_slow = 2.0 / ((double)slow + 1.0);
        const double alpha_signal = 2.0 / ((double)signal + 1.0);
        Macd step = {fast != 0 && signal != 0 && slow > fast && slow <= length,
                     fast, slow, signal, alpha_fast, alpha_slow, alpha_signal,
                     1.0 - alpha_fast, 1.0 - alpha_slow, 1.0 - alpha_signal, 0.0, 0.0, 0.0};
        stream<false, 3>(g, 0, step);
        break;
    }
    case 4: {
        const u32 n = code[1];
        Bollinger step = {n != 0 && n <= length, closes + offset[lane], (double)n, ks[j],
                          {n, 0, 0.0, 0.0}, 0.0, 0.0};
        stream<true, 3>(g, n, step);
        break;
    }
    default:
        break;
    }
}
