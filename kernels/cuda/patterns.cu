// Candlestick patterns: one thread per bar writes the bar's bitmask (bit p:
// pattern p completes at this bar), from the bar and the two before it in
// its series. The rules are those of kernels/src/patterns.rs, operation for
// operation; products go through __dmul_rn so none is fused into an FMA,
// which keeps the masks equal to the CPU twin's.
//
// Layout: bars[0 .. total) opens, [total .. 2 total) highs, then lows, then
// closes, every series concatenated; series s spans offsets[s] ..
// offsets[s+1]. thresholds: doji_body, shadow_ratio, small_shadow,
// long_body, star_body.

struct Bar {
    double open;
    double close;
    double body;
    double range;
    double upper;
    double lower;
};

__device__ Bar make_bar(const double* bars, unsigned long long total, unsigned long long i) {
    const double open = bars[i];
    const double high = bars[total + i];
    const double low = bars[2 * total + i];
    const double close = bars[3 * total + i];
    const double top = close > open ? close : open;
    const double bottom = close > open ? open : close;
    Bar b;
    b.open = open;
    b.close = close;
    b.body = top - bottom;
    b.range = high - low;
    b.upper = high - top;
    b.lower = bottom - low;
    return b;
}

__device__ __forceinline__ double bar_top(const Bar& b) {
    return b.close > b.open ? b.close : b.open;
}

__device__ __forceinline__ double bar_bottom(const Bar& b) {
    return b.close > b.open ? b.open : b.close;
}

extern "C" __global__ void patterns_run(
    const double* bars,                 // device [4 total]
    unsigned long long total,
    const unsigned long long* offsets,  // device [n_series + 1]
    unsigned int n_series,
    const double* thresholds,           // device [5]
    unsigned int* masks                 // device [total]
) {
    const unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) {
        return;
    }
    // The series holding bar i: the last s with offsets[s] <= i (empty
    // series share their offset with the next one, so take the last).
    unsigned int lo = 0;
    unsigned int hi = n_series;
    while (hi - lo > 1) {
        const unsigned int mid = lo + (hi - lo) / 2;
        if (offsets[mid] <= i) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    const unsigned long long back = i - offsets[lo];
    const double doji_body = thresholds[0];
    const double shadow_ratio = thresholds[1];
    const double small_shadow = thresholds[2];
    const double long_body = thresholds[3];
    const double star_body = thresholds[4];

    const Bar c = make_bar(bars, total, i);
    unsigned int mask = 0;
    if (c.range > 0.0) {
        if (c.body <= __dmul_rn(doji_body, c.range)) {
            mask |= 1u << 0;
        } else {
            if (c.lower >= __dmul_rn(shadow_ratio, c.body) && c.upper <= __dmul_rn(small_shadow, c.range)) {
                mask |= 1u << 1;
            }
            if (c.upper >= __dmul_rn(shadow_ratio, c.body) && c.lower <= __dmul_rn(small_shadow, c.range)) {
                mask |= 1u << 2;
            }
        }
    }
    if (back >= 1) {
        const Bar b = make_bar(bars, total, i - 1);
        if (b.close < b.open && c.close > c.open && c.open <= b.close && c.close >= b.open && c.body > b.body) {
            mask |= 1u << 3;
        }
        if (b.close > b.open && c.close < c.open && c.open >= b.close && c.close <= b.open && c.body > b.body) {
            mask |= 1u << 4;
        }
        if (back >= 2) {
            const Bar a = make_bar(bars, total, i - 2);
            const bool is_long = a.body >= __dmul_rn(long_body, a.range);
            const bool small = b.body <= __dmul_rn(star_body, a.body);
            const double midpoint = __dmul_rn(0.5, a.open + a.close);
            if (a.close < a.open && is_long && small && bar_top(b) <= a.close && c.close > c.open && c.close > midpoint) {
                mask |= 1u << 5;
            }
            if (a.close > a.open && is_long && small && bar_bottom(b) >= a.close && c.close < c.open && c.close < midpoint) {
                mask |= 1u << 6;
            }
        }
    }
    masks[i] = mask;
}
