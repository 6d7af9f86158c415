// Technical indicators over close prices, in f64: one thread per
// (indicator, series), the same single pass as the CPU twin in
// kernels/src/indicators.rs, operation for operation. Products go through
// __dmul_rn so NVRTC cannot fuse them with an addition into an FMA (which
// rounds once instead of twice and would break bit-for-bit parity);
// division and sqrt are IEEE-rounded in double precision.
//
// Layout: closes of every series concatenated; series s spans
// closes[offsets[s] .. offsets[s+1]]. Its output lines lie at
// out[offsets[s] * n_lines + line * len ...], `len` values each.
// codes[5 j ..]: kind (0 SMA, 1 EMA, 2 RSI, 3 MACD, 4 Bollinger), three
// integer parameters, the indicator's first line.

__device__ __forceinline__ double nan_value() {
    return __longlong_as_double(0x7ff8000000000000LL);
}

__device__ double window_sum(const double* x, unsigned long long from, unsigned long long to) {
    double sum = 0.0;
    for (unsigned long long i = from; i < to; ++i) {
        sum = sum + x[i];
    }
    return sum;
}

__device__ void fill_nan(double* out, unsigned long long len) {
    const double nan = nan_value();
    for (unsigned long long t = 0; t < len; ++t) {
        out[t] = nan;
    }
}

__device__ void sma(const double* x, unsigned long long len, unsigned long long n, double* out) {
    if (n == 0 || n > len) {
        fill_nan(out, len);
        return;
    }
    fill_nan(out, n - 1);
    const double nf = (double)n;
    double sum = 0.0;
    // The window sum is recomputed from scratch when phase is 0: at t =
    // n-1, 2n-1, ... as the CPU twin's fresh_window.
    unsigned long long phase = 0;
    for (unsigned long long t = n - 1; t < len; ++t) {
        if (phase == 0) {
            sum = window_sum(x, t + 1 - n, t + 1);
        } else {
            sum = sum + (x[t] - x[t - n]);
        }
        phase = phase + 1 == n ? 0 : phase + 1;
        out[t] = sum / nf;
    }
}

__device__ void ema(const double* x, unsigned long long len, unsigned long long n, double* out) {
    if (n == 0 || n > len) {
        fill_nan(out, len);
        return;
    }
    fill_nan(out, n - 1);
    const double alpha = 2.0 / ((double)n + 1.0);
    const double beta = 1.0 - alpha;
    double e = window_sum(x, 0, n) / (double)n;
    out[n - 1] = e;
    for (unsigned long long t = n; t < len; ++t) {
        e = __dadd_rn(__dmul_rn(alpha, x[t]), __dmul_rn(beta, e));
        out[t] = e;
    }
}

__device__ void rsi(const double* x, unsigned long long len, unsigned long long n, double* out) {
    if (n == 0 || n >= len) {
        fill_nan(out, len);
        return;
    }
    fill_nan(out, n);
    const double nf = (double)n;
    const double keep = (double)(n - 1);
    double gain = 0.0;
    double loss = 0.0;
    for (unsigned long long t = 1; t < len; ++t) {
        const double d = x[t] - x[t - 1];
        const double g = d > 0.0 ? d : 0.0;
        const double l = d < 0.0 ? -d : 0.0;
        if (t < n) {
            gain = gain + g;
            loss = loss + l;
            continue;
        }
        if (t == n) {
            gain = (gain + g) / nf;
            loss = (loss + l) / nf;
        } else {
            gain = __dadd_rn(__dmul_rn(gain, keep), g) / nf;
            loss = __dadd_rn(__dmul_rn(loss, keep), l) / nf;
        }
        out[t] = loss == 0.0 ? 100.0 : 100.0 - 100.0 / (1.0 + gain / loss);
    }
}

__device__ void macd(const double* x, unsigned long long len, unsigned long long fast,
                     unsigned long long slow, unsigned long long signal,
                     double* out_macd, double* out_signal, double* out_hist) {
    if (fast == 0 || signal == 0 || slow <= fast || slow > len) {
        fill_nan(out_macd, len);
        fill_nan(out_signal, len);
        fill_nan(out_hist, len);
        return;
    }
    const unsigned long long warm_signal = slow + signal - 2 < len ? slow + signal - 2 : len;
    fill_nan(out_macd, slow - 1);
    fill_nan(out_signal, warm_signal);
    fill_nan(out_hist, warm_signal);
    const double alpha_fast = 2.0 / ((double)fast + 1.0);
    const double alpha_slow = 2.0 / ((double)slow + 1.0);
    const double alpha_signal = 2.0 / ((double)signal + 1.0);
    const double beta_fast = 1.0 - alpha_fast;
    const double beta_slow = 1.0 - alpha_slow;
    const double beta_signal = 1.0 - alpha_signal;
    double ema_fast = 0.0;
    double ema_slow = 0.0;
    double sig = 0.0;
    for (unsigned long long t = 0; t < len; ++t) {
        if (t < fast) {
            ema_fast = ema_fast + x[t];
            if (t == fast - 1) {
                ema_fast = ema_fast / (double)fast;
            }
        } else {
            ema_fast = __dadd_rn(__dmul_rn(alpha_fast, x[t]), __dmul_rn(beta_fast, ema_fast));
        }
        if (t < slow) {
            ema_slow = ema_slow + x[t];
            if (t < slow - 1) {
                continue;
            }
            ema_slow = ema_slow / (double)slow;
        } else {
            ema_slow = __dadd_rn(__dmul_rn(alpha_slow, x[t]), __dmul_rn(beta_slow, ema_slow));
        }
        const double m = ema_fast - ema_slow;
        out_macd[t] = m;
        const unsigned long long i = t + 1 - slow;
        if (i < signal) {
            sig = sig + m;
            if (i < signal - 1) {
                continue;
            }
            sig = sig / (double)signal;
        } else {
            sig = __dadd_rn(__dmul_rn(alpha_signal, m), __dmul_rn(beta_signal, sig));
        }
        out_signal[t] = sig;
        out_hist[t] = m - sig;
    }
}

__device__ void bollinger(const double* x, unsigned long long len, unsigned long long n, double k,
                          double* mid, double* up, double* lo) {
    if (n == 0 || n > len) {
        fill_nan(mid, len);
        fill_nan(up, len);
        fill_nan(lo, len);
        return;
    }
    fill_nan(mid, n - 1);
    fill_nan(up, n - 1);
    fill_nan(lo, n - 1);
    const double nf = (double)n;
    double sum = 0.0;
    double mean = 0.0;
    double m2 = 0.0;
    unsigned long long phase = 0;
    for (unsigned long long t = n - 1; t < len; ++t) {
        const bool fresh = phase == 0;
        phase = phase + 1 == n ? 0 : phase + 1;
        if (fresh) {
            sum = window_sum(x, t + 1 - n, t + 1);
            mean = sum / nf;
            m2 = 0.0;
            for (unsigned long long i = t + 1 - n; i <= t; ++i) {
                const double d = x[i] - mean;
                m2 = __dadd_rn(m2, __dmul_rn(d, d));
            }
        } else {
            const double nw = x[t];
            const double old = x[t - n];
            const double old_mean = mean;
            sum = sum + (nw - old);
            mean = sum / nf;
            m2 = __dadd_rn(m2, __dmul_rn(nw - old, (nw - mean) + (old - old_mean)));
        }
        const double sd = sqrt((m2 > 0.0 ? m2 : 0.0) / nf);
        const double width = __dmul_rn(k, sd);
        mid[t] = mean;
        up[t] = mean + width;
        lo[t] = mean - width;
    }
}

extern "C" __global__ void indicators_run(
    const double* closes,                   // device [total]
    const unsigned long long* offsets,      // device [n_series + 1]
    unsigned int n_series,
    const unsigned int* codes,              // device [5 n_indicators]
    const double* ks,                       // device [n_indicators]
    unsigned int n_indicators,
    unsigned int n_lines,
    double* out                             // device [total n_lines]
) {
    const unsigned int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= n_series * n_indicators) {
        return;
    }
    // Neighbouring threads take the same indicator on neighbouring series,
    // so a warp runs one code path.
    const unsigned int j = id / n_series;
    const unsigned int s = id % n_series;
    const unsigned long long start = offsets[s];
    const unsigned long long len = offsets[s + 1] - start;
    const double* x = closes + start;
    const unsigned int* code = codes + 5 * j;
    double* line = out + start * n_lines + (unsigned long long)code[4] * len;
    switch (code[0]) {
    case 0:
        sma(x, len, code[1], line);
        break;
    case 1:
        ema(x, len, code[1], line);
        break;
    case 2:
        rsi(x, len, code[1], line);
        break;
    case 3:
        macd(x, len, code[1], code[2], code[3], line, line + len, line + 2 * len);
        break;
    case 4:
        bollinger(x, len, code[1], ks[j], line, line + len, line + 2 * len);
        break;
    default:
        break;
    }
}
