// Technical indicators over close prices, in f64: one warp per (indicator,
// group of up to 32 series), one lane per series, each lane running the
// same single pass as the CPU twin in kernels/src/indicators.rs, operation
// for operation. Products go through __dmul_rn so NVRTC cannot fuse them
// with an addition into an FMA (which rounds once instead of twice and would
// break bit-for-bit parity; the options also say --fmad=false); division
// and sqrt are IEEE-rounded in double precision.
//
// Layout, time-major within a group so that a warp's loads and stores at
// one time step touch consecutive addresses: the host sorts the series by
// length, longest first, and cuts them into groups of up to 32 (members).
// Row t of a group holds x_m[t] of every member m still running at t (those
// longer than t, a prefix of the members since they are sorted), at
// offset(t) + m from the group's base, offset(t) = sum_m min(len_m, t).
// Nothing is padded: a group's rows fill exactly the sum of its lengths.
// Group g holds the slots 32 g .. 32 g + 31 (the last may hold fewer),
// from bases[g] to bases[g + 1] (its size: the sum of its lengths); its
// output line l has the same rows, at out + n_lines bases[g] + l size.
// lens[slot]: the series' lengths, descending.
// codes[5 j ..]: kind (0 SMA, 1 EMA, 2 RSI, 3 MACD, 4 Bollinger), three
// integer parameters, the indicator's first line.

typedef unsigned long long u64;
typedef unsigned int u32;

// Rows read ahead: a lane issues BATCH independent loads before the
// recurrence consumes them, so a warp waits for memory once per BATCH steps
// rather than once per step (a group's warps are few: they are the
// parallelism the recurrences allow).
#define BATCH 8

__device__ __forceinline__ double nan_value() {
    return __longlong_as_double(0x7ff8000000000000LL);
}

// One lane's view of its group.
struct Member {
    const double* __restrict__ x;  // the group's rows
    const u32* __restrict__ lens;  // the group's member lengths, descending
    u32 width;                     // members in the group
    u32 m;                         // this lane's member
    u32 len;                       // its length
};

// A cursor over a group's rows; the same in every lane of the warp.
struct Rows {
    u32 t;       // the row
    u32 at;      // its offset from the group's base
    u32 active;  // members longer than t: the row's length
    u32 drop;    // the next t at which `active` falls
};

__device__ __forceinline__ void rows_settle(Rows& r, const u32* __restrict__ lens) {
    while (r.active > 0 && lens[r.active - 1] <= r.t) {
        r.active -= 1;
    }
    r.drop = r.active > 0 ? lens[r.active - 1] : ~0u;
}

__device__ __forceinline__ Rows rows_at(const Member& g, u32 t) {
    Rows r;
    r.t = t;
    r.at = 0;
    r.active = 0;
    for (u32 k = 0; k < g.width; ++k) {
        const u32 len = g.lens[k];
        r.at += len < t ? len : t;
        r.active += len > t ? 1 : 0;
    }
    r.drop = r.active > 0 ? g.lens[r.active - 1] : ~0u;
    return r;
}

__device__ __forceinline__ void rows_next(Rows& r, const u32* __restrict__ lens) {
    r.at += r.active;
    r.t += 1;
    if (r.t >= r.drop) {
        rows_settle(r, lens);
    }
}

// Runs step(t, at, x[t], x[t - lag]) for t = 0 .. len-1 of the lane's
// series, in order (x[t - lag] only when LAGGED and t >= lag, else 0), with
// `at` the row offset where its outputs at t go.
template <bool LAGGED, class Step>
__device__ __forceinline__ void stream(const Member& g, u32 lag, Step& step) {
    Rows now = rows_at(g, 0);
    Rows back = now;
    for (u32 t0 = 0; t0 < g.len; t0 += BATCH) {
        u32 at[BATCH];
        double v[BATCH];
        double old[BATCH];
#pragma unroll
        for (int i = 0; i < BATCH; ++i) {
            const u32 t = t0 + i;
            at[i] = now.at;
            v[i] = t < g.len ? g.x[now.at + g.m] : 0.0;
            rows_next(now, g.lens);
            old[i] = 0.0;
            if (LAGGED && t >= lag) {
                old[i] = t < g.len ? g.x[back.at + g.m] : 0.0;
                rows_next(back, g.lens);
            }
        }
#pragma unroll
        for (int i = 0; i < BATCH; ++i) {
            if (t0 + i < g.len) {
                step(t0 + i, at[i], v[i], old[i]);
            }
        }
    }
}

// Every position of a line NaN, for an indicator the series is too short
// for.
__device__ void fill_nan(const Member& g, double* line) {
    const double nan = nan_value();
    Rows r = rows_at(g, 0);
    for (u32 t = 0; t < g.len; ++t) {
        line[r.at + g.m] = nan;
        rows_next(r, g.lens);
    }
}

// The sum of squared deviations from `mean` of x[from .. from + n], left to
// right (the CPU twin's window_m2).
__device__ double window_m2(const Member& g, u32 from, u32 n, double mean) {
    Rows r = rows_at(g, from);
    double m2 = 0.0;
    for (u32 i0 = 0; i0 < n; i0 += BATCH) {
        double v[BATCH];
#pragma unroll
        for (int i = 0; i < BATCH; ++i) {
            v[i] = 0.0;
            if (i0 + i < n) {
                v[i] = g.x[r.at + g.m];
                rows_next(r, g.lens);
            }
        }
#pragma unroll
        for (int i = 0; i < BATCH; ++i) {
            if (i0 + i < n) {
                const double d = v[i] - mean;
                m2 = __dadd_rn(m2, __dmul_rn(d, d));
            }
        }
    }
    return m2;
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

struct Sma {
    double* out;
    u32 m;
    double nf;
    WindowSum window;

    __device__ __forceinline__ void operator()(u32 t, u32 at, double x, double old) {
        const bool fresh = window.take(t, x);
        if (t + 1 < window.n) {
            out[at + m] = nan_value();
            return;
        }
        if (!fresh) {
            window.sum = window.sum + (x - old);
        }
        out[at + m] = window.sum / nf;
    }
};

struct Ema {
    double* out;
    u32 m;
    u32 n;
    double alpha;
    double beta;
    double e;

    __device__ __forceinline__ void operator()(u32 t, u32 at, double x, double) {
        if (t < n) {
            e = e + x;
            if (t + 1 < n) {
                out[at + m] = nan_value();
                return;
            }
            e = e / (double)n;
        } else {
            e = __dadd_rn(__dmul_rn(alpha, x), __dmul_rn(beta, e));
        }
        out[at + m] = e;
    }
};

struct Rsi {
    double* out;
    u32 m;
    u32 n;
    double nf;
    double keep;
    double previous;
    double gain;
    double loss;

    __device__ __forceinline__ void operator()(u32 t, u32 at, double x, double) {
        if (t == 0) {
            previous = x;
            out[at + m] = nan_value();
            return;
        }
        const double d = x - previous;
        previous = x;
        const double g = d > 0.0 ? d : 0.0;
        const double l = d < 0.0 ? -d : 0.0;
        if (t < n) {
            gain = gain + g;
            loss = loss + l;
            out[at + m] = nan_value();
            return;
        }
        if (t == n) {
            gain = (gain + g) / nf;
            loss = (loss + l) / nf;
        } else {
            gain = __dadd_rn(__dmul_rn(gain, keep), g) / nf;
            loss = __dadd_rn(__dmul_rn(loss, keep), l) / nf;
        }
        out[at + m] = loss == 0.0 ? 100.0 : 100.0 - 100.0 / (1.0 + gain / loss);
    }
};

struct Macd {
    double* out_macd;
    double* out_signal;
    double* out_hist;
    u32 m;
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

    __device__ __forceinline__ void operator()(u32 t, u32 at, double x, double) {
        const double nan = nan_value();
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
                out_macd[at + m] = nan;
                out_signal[at + m] = nan;
                out_hist[at + m] = nan;
                return;
            }
            ema_slow = ema_slow / (double)slow;
        } else {
            ema_slow = __dadd_rn(__dmul_rn(alpha_slow, x), __dmul_rn(beta_slow, ema_slow));
        }
        const double value = ema_fast - ema_slow;
        out_macd[at + m] = value;
        const u32 i = t + 1 - slow;
        if (i < signal) {
            sig = sig + value;
            if (i < signal - 1) {
                out_signal[at + m] = nan;
                out_hist[at + m] = nan;
                return;
            }
            sig = sig / (double)signal;
        } else {
            sig = __dadd_rn(__dmul_rn(alpha_signal, value), __dmul_rn(beta_signal, sig));
        }
        out_signal[at + m] = sig;
        out_hist[at + m] = value - sig;
    }
};

struct Bollinger {
    Member g;
    double* mid;
    double* up;
    double* lo;
    u32 m;
    double nf;
    double k;
    WindowSum window;
    double mean;
    double m2;

    __device__ __forceinline__ void operator()(u32 t, u32 at, double x, double old) {
        const bool fresh = window.take(t, x);
        if (t + 1 < window.n) {
            const double nan = nan_value();
            mid[at + m] = nan;
            up[at + m] = nan;
            lo[at + m] = nan;
            return;
        }
        if (fresh) {
            mean = window.sum / nf;
            m2 = window_m2(g, t + 1 - window.n, window.n, mean);
        } else {
            const double old_mean = mean;
            window.sum = window.sum + (x - old);
            mean = window.sum / nf;
            m2 = __dadd_rn(m2, __dmul_rn(x - old, (x - mean) + (old - old_mean)));
        }
        const double sd = sqrt((m2 > 0.0 ? m2 : 0.0) / nf);
        const double width = __dmul_rn(k, sd);
        mid[at + m] = mean;
        up[at + m] = mean + width;
        lo[at + m] = mean - width;
    }
};

extern "C" __global__ void indicators_run(
    const double* __restrict__ closes,  // device [total], the groups' rows
    const u64* __restrict__ bases,      // device [n_groups + 1]
    const u32* __restrict__ lens,       // device [n_slots]
    unsigned int n_slots,
    const unsigned int* __restrict__ codes,  // device [5 n_indicators]
    const double* __restrict__ ks,           // device [n_indicators]
    unsigned int n_indicators,
    unsigned int n_lines,
    double* __restrict__ out                 // device [total n_lines]
) {
    // Neighbouring warps take the same indicator on neighbouring groups, so
    // a warp runs one code path and its lanes walk the same rows.
    const unsigned int n_groups = (n_slots + 31) / 32;
    const u64 warp = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const unsigned int lane = threadIdx.x & 31;
    if (warp >= (u64)n_groups * n_indicators) {
        return;
    }
    const unsigned int j = (unsigned int)(warp / n_groups);
    const unsigned int group = (unsigned int)(warp % n_groups);
    const unsigned int first = 32 * group;
    const unsigned int width = n_slots - first < 32 ? n_slots - first : 32;
    if (lane >= width) {
        return;
    }
    const u64 base = bases[group];
    const u64 size = bases[group + 1] - base;
    Member g;
    g.x = closes + base;
    g.lens = lens + first;
    g.width = width;
    g.m = lane;
    g.len = g.lens[lane];
    const unsigned int* code = codes + 5 * j;
    double* line = out + (u64)n_lines * base + (u64)code[4] * size;
    const u32 len = g.len;
    switch (code[0]) {
    case 0: {
        const u32 n = code[1];
        if (n == 0 || n > len) {
            fill_nan(g, line);
            break;
        }
        Sma step = {line, lane, (double)n, {n, 0, 0.0, 0.0}};
        stream<true>(g, n, step);
        break;
    }
    case 1: {
        const u32 n = code[1];
        if (n == 0 || n > len) {
            fill_nan(g, line);
            break;
        }
        const double alpha = 2.0 / ((double)n + 1.0);
        Ema step = {line, lane, n, alpha, 1.0 - alpha, 0.0};
        stream<false>(g, 0, step);
        break;
    }
    case 2: {
        const u32 n = code[1];
        if (n == 0 || n >= len) {
            fill_nan(g, line);
            break;
        }
        Rsi step = {line, lane, n, (double)n, (double)(n - 1), 0.0, 0.0, 0.0};
        stream<false>(g, 0, step);
        break;
    }
    case 3: {
        const u32 fast = code[1];
        const u32 slow = code[2];
        const u32 signal = code[3];
        if (fast == 0 || signal == 0 || slow <= fast || slow > len) {
            fill_nan(g, line);
            fill_nan(g, line + size);
            fill_nan(g, line + 2 * size);
            break;
        }
        const double alpha_fast = 2.0 / ((double)fast + 1.0);
        const double alpha_slow = 2.0 / ((double)slow + 1.0);
        const double alpha_signal = 2.0 / ((double)signal + 1.0);
        Macd step = {line, line + size, line + 2 * size, lane, fast, slow, signal,
                     alpha_fast, alpha_slow, alpha_signal,
                     1.0 - alpha_fast, 1.0 - alpha_slow, 1.0 - alpha_signal,
                     0.0, 0.0, 0.0};
        stream<false>(g, 0, step);
        break;
    }
    case 4: {
        const u32 n = code[1];
        if (n == 0 || n > len) {
            fill_nan(g, line);
            fill_nan(g, line + size);
            fill_nan(g, line + 2 * size);
            break;
        }
        Bollinger step = {g, line, line + size, line + 2 * size, lane, (double)n, ks[j],
                          {n, 0, 0.0, 0.0}, 0.0, 0.0};
        stream<true>(g, n, step);
        break;
    }
    default:
        break;
    }
}
