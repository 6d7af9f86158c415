//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
//! 3", SC 2011): a counter-based generator, so the numbers of path `i`
//! depend only on (seed, i), never on which thread or shard computes them.
//! `cuda/philox.cuh` is the same generator in CUDA C; the known-answer test
//! below pins both to the reference vectors of Random123.
//!
//! Conventions every kind follows (the CUDA side matches them bit for bit):
//! - key = (seed low 32 bits, seed high 32 bits);
//! - counter = (stream index low, stream index high, draw block low, draw
//!   block high), where the stream is a path (or scenario) and the draw
//!   block counts groups of four numbers within it;
//! - [`u01`] turns a 32-bit word into a float in (0, 1), [`normal_pair`]
//!   turns two words into two standard normals by Box-Muller.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let product = u64::from(a) * u64::from(b);
    ((product >> 32) as u32, product as u32)
}

#[inline(always)]
fn round(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo(M0, ctr[0]);
    let (hi1, lo1) = mulhilo(M1, ctr[2]);
    [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0]
}

/// Ten rounds of Philox4x32 on `ctr` under `key`.
#[inline]
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    ctr = round(ctr, key);
    for _ in 1..10 {
        key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
        ctr = round(ctr, key);
    }
    ctr
}

/// The key of a seed.
#[inline]
pub fn key(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// The counter of draw block `block` of stream `stream`.
#[inline]
pub fn counter(stream: u64, block: u64) -> [u32; 4] {
    [
        stream as u32,
        (stream >> 32) as u32,
        block as u32,
        (block >> 32) as u32,
    ]
}

/// A 32-bit word as a float strictly inside (0, 1): the top 23 bits, offset
/// by half a step (exact in f32, so never 0 or 1).
#[inline(always)]
pub fn u01(x: u32) -> f32 {
    ((x >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// Two standard normals from two words (Box-Muller), in f32 as on the GPU:
/// `r = sqrt(-2 ln u1)`, `(r cos 2 pi u2, r sin 2 pi u2)`.
///
/// `ln`, `cos` and `sin` are the polynomial approximations [`ln_unit`] and
/// [`sincos_2pi`] (within a few f32 ulp of the exact values, as CUDA's
/// `logf` and `sincospif` are), written without branches so that the
/// batched [`normals_lanes`] vectorises; both give the same bits.
#[inline(always)]
pub fn normal_pair(a: u32, b: u32) -> (f32, f32) {
    let r = (-2.0 * ln_unit(u01(a))).sqrt();
    let (sin, cos) = sincos_2pi(u01(b));
    (r * cos, r * sin)
}

/// The natural logarithm of a positive normal f32 (Cephes' `logf`: within
/// about one ulp; no special cases, so not for 0, subnormals, infinities
/// or NaN).
#[inline(always)]
pub fn ln_unit(x: f32) -> f32 {
    let bits = x.to_bits();
    // x = m 2^e with m in [1/2, 1), then m in [sqrt(1/2), sqrt(2)).
    let e = (bits >> 23) as i32 - 126;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    let e = (e - i32::from(small)) as f32;
    let f = if small { m + m } else { m } - 1.0;
    let z = f * f;
    let mut p = 0.070_376_836f32;
    for c in [
        -0.115_146_1,
        0.116_769_984,
        -0.124_201_41,
        0.142_493_23,
        -0.166_680_57,
        0.200_007_14,
        -0.249_999_94,
        0.333_333_3,
    ] {
        p = p * f + c;
    }
    // ln 2 = 0.693359375 - 2.12194440e-4, the first part exact in few bits.
    let y = f * z * p + e * -2.121_944_4e-4 - 0.5 * z;
    f + y + e * 0.693_359_4
}

/// `(sin 2 pi u, cos 2 pi u)` for `u` in [0, 1), within a few f32 ulp. The
/// argument is reduced exactly (as CUDA's `sincospif(2 u)` does): `4 u = q +
/// r` with q an integer and |r| <= 1/2, then minimax polynomials in r of
/// `sin(pi r / 2)` and `cos(pi r / 2)`, swapped and negated by quadrant.
#[inline(always)]
pub fn sincos_2pi(u: f32) -> (f32, f32) {
    // Adding 1.5 * 2^23 rounds to an integer, left in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let t = 4.0 * u;
    let big = t + ROUND;
    let q = big.to_bits();
    let r = t - (big - ROUND);
    let s = r * r;
    let sin = r * (1.570_796_4 + s * (-0.645_963_5 + s * (0.079_680_03 + s * -0.004_601_658)));
    let cos =
        1.0 + s * (-1.233_700_5 + s * (0.253_669_23 + s * (-0.020_860_165 + s * 0.000_903_766_54)));
    // Quadrant q: (sin, cos) of pi q / 2 + angle = (s, c), (c, -s),
    // (-s, -c), (-c, s).
    let (sin, cos) = if q & 1 == 0 { (sin, cos) } else { (cos, sin) };
    let sin_sign = (q & 2) << 30;
    let cos_sign = (q.wrapping_add(1) & 2) << 30;
    (
        f32::from_bits(sin.to_bits() ^ sin_sign),
        f32::from_bits(cos.to_bits() ^ cos_sign),
    )
}

/// Streams per batch of [`philox4x32_10_lanes`] and [`normals_lanes`].
pub const LANES: usize = 16;

/// Philox4x32-10 of draw block `block` of the [`LANES`] streams `first`,
/// `first + 1`, ...: word `i` of stream `first + l` is `[i][l]`. The same
/// words as [`philox4x32_10`], laid out so that the rounds vectorise.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lane loops, written to vectorise
pub fn philox4x32_10_lanes(first: u64, block: u64, key: [u32; 2]) -> [[u32; LANES]; 4] {
    let mut c = [[0u32; LANES]; 4];
    for l in 0..LANES {
        let stream = first.wrapping_add(l as u64);
        c[0][l] = stream as u32;
        c[1][l] = (stream >> 32) as u32;
        c[2][l] = block as u32;
        c[3][l] = (block >> 32) as u32;
    }
    let mut k = key;
    for i in 0..10 {
        if i > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let mut next = [[0u32; LANES]; 4];
        for l in 0..LANES {
            let (hi0, lo0) = mulhilo(M0, c[0][l]);
            let (hi1, lo1) = mulhilo(M1, c[2][l]);
            next[0][l] = hi1 ^ c[1][l] ^ k[0];
            next[1][l] = lo1;
            next[2][l] = hi0 ^ c[3][l] ^ k[1];
            next[3][l] = lo0;
        }
        c = next;
    }
    c
}

/// The normals of a batch of words: [`normal_pair`] of words (0, 1), and of
/// words (2, 3) when `pairs` is 2 (otherwise those two stay 0).
#[inline(always)]
pub fn normals_lanes(words: &[[u32; LANES]; 4], pairs: usize) -> [[f32; LANES]; 4] {
    let mut z = [[0.0f32; LANES]; 4];
    for p in 0..pairs.min(2) {
        for l in 0..LANES {
            let (a, b) = normal_pair(words[2 * p][l], words[2 * p + 1][l]);
            z[2 * p][l] = a;
            z[2 * p + 1][l] = b;
        }
    }
    z
}

/// The builds of the batched kernels (all give the same bits: only IEEE
/// operations, in the same order, and no fused multiply-adds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    Portable,
    /// x86-64 with AVX2.
    Avx2,
    /// x86-64 with AVX-512 F, VL, DQ and BW (16 f32 lanes in a register).
    Avx512,
}

/// The widest build of the batched kernels that this CPU runs.
#[inline]
pub fn simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512vl") && has!("avx512dq") && has!("avx512bw") {
            return Simd::Avx512;
        }
        if has!("avx2") {
            return Simd::Avx2;
        }
    }
    Simd::Portable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's kat_vectors for philox4x32 with 10 rounds.
    #[test]
    fn known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    /// Every bit of a seed and of a counter reaches the generator, as
    /// `cuda/philox.cuh` splits them: seeds (or streams, or blocks) that
    /// differ only above bit 31 give other draws.
    #[test]
    fn the_high_words_of_seeds_and_counters_count() {
        assert_eq!(key(0x0000_0001_0000_0002), [2, 1]);
        assert_eq!(
            counter(0x0000_0003_0000_0004, 0x0000_0005_0000_0006),
            [4, 3, 6, 5]
        );
        let low = 42u64;
        let high = low | (1 << 40);
        assert_ne!(key(low), key(high));
        assert_ne!(
            philox4x32_10(counter(0, 0), key(low)),
            philox4x32_10(counter(0, 0), key(high))
        );
        assert_ne!(counter(1, 0), counter(1 | (1 << 33), 0));
        assert_ne!(counter(0, 1), counter(0, 1 | (1 << 33)));
    }

    #[test]
    fn uniforms_stay_inside_the_open_interval() {
        assert!(u01(0) > 0.0);
        assert!(u01(u32::MAX) < 1.0);
        let (a, b) = normal_pair(0, 0);
        assert!(a.is_finite() && b.is_finite());
    }

    /// Box-Muller against the formula in f64, at uniforms across (0, 1):
    /// `r = sqrt(-2 ln u1)`, `(r cos 2 pi u2, r sin 2 pi u2)`, within a few
    /// f32 ulp. (The moments alone would pass a constant pair (1, -1).)
    #[test]
    fn normal_pairs_are_box_muller_of_their_uniforms() {
        for (a, b) in [
            (0u32, 0u32),
            (0x0100_0000, 0x4000_0000),
            (0x1234_5678, 0x9abc_def0),
            (1 << 31, 0xc000_0000),
            (0xdead_beef, 0x2000_0000),
            (u32::MAX, u32::MAX),
        ] {
            let (u1, u2) = (f64::from(u01(a)), f64::from(u01(b)));
            let r = (-2.0 * u1.ln()).sqrt();
            let angle = std::f64::consts::TAU * u2;
            let (z0, z1) = normal_pair(a, b);
            let tolerance = 1e-5 * r.max(1.0);
            assert!(
                (f64::from(z0) - r * angle.cos()).abs() < tolerance,
                "{a:#x} {b:#x}: {z0} vs {}",
                r * angle.cos()
            );
            assert!(
                (f64::from(z1) - r * angle.sin()).abs() < tolerance,
                "{a:#x} {b:#x}: {z1} vs {}",
                r * angle.sin()
            );
        }
    }

    #[test]
    fn normals_have_the_right_moments() {
        let k = key(42);
        let mut sum = 0.0f64;
        let mut sq = 0.0f64;
        let n = 200_000u64;
        for i in 0..n / 4 {
            let w = philox4x32_10(counter(i, 0), k);
            let (a, b) = normal_pair(w[0], w[1]);
            let (c, d) = normal_pair(w[2], w[3]);
            for z in [a, b, c, d] {
                sum += f64::from(z);
                sq += f64::from(z) * f64::from(z);
            }
        }
        let mean = sum / n as f64;
        let var = sq / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
    }

    #[test]
    fn lanes_equal_the_scalar_generator() {
        let k = key(0xdead_beef_1234);
        for first in [0u64, 5, u64::from(u32::MAX) - 3] {
            for block in [0u64, 7, 1 << 33] {
                let w = philox4x32_10_lanes(first, block, k);
                let z = normals_lanes(&w, 2);
                for l in 0..LANES {
                    let s = philox4x32_10(counter(first.wrapping_add(l as u64), block), k);
                    assert_eq!([w[0][l], w[1][l], w[2][l], w[3][l]], s);
                    let (a, b) = normal_pair(s[0], s[1]);
                    let (c, d) = normal_pair(s[2], s[3]);
                    let got = [z[0][l], z[1][l], z[2][l], z[3][l]].map(f32::to_bits);
                    assert_eq!(got, [a, b, c, d].map(f32::to_bits));
                }
            }
        }
    }

    /// The distance in f32 ulps between `got` and the exact `want`.
    fn ulps(got: f32, want: f64) -> f64 {
        let spacing = 2.0f64.powi((want.abs().log2().floor() as i32).max(-126) - 23);
        (f64::from(got) - want).abs() / spacing
    }

    /// Every uniform Box-Muller can take (a stride of them in debug builds):
    /// ln within 2 ulp, sin and cos within 2 ulp or 2^-27 absolute (near
    /// their zeros, where CUDA's sincospif is also absolute).
    #[test]
    fn approximations_are_within_a_few_ulp() {
        let stride = if cfg!(debug_assertions) { 61 } else { 1 };
        let mut worst = [0.0f64; 3];
        for k in (0u32..1 << 23).step_by(stride) {
            let u = u01(k << 9);
            let ln = ln_unit(u);
            worst[0] = worst[0].max(ulps(ln, f64::from(u).ln()));
            let (sin, cos) = sincos_2pi(u);
            let angle = std::f64::consts::TAU * f64::from(u);
            for (i, (got, want)) in [(sin, angle.sin()), (cos, angle.cos())]
                .into_iter()
                .enumerate()
            {
                let error = if (f64::from(got) - want).abs() < 2f64.powi(-27) {
                    0.0
                } else {
                    ulps(got, want)
                };
                worst[1 + i] = worst[1 + i].max(error);
            }
        }
        assert!(
            worst.iter().all(|&w| w <= 2.0),
            "ln, sin, cos: {worst:?} ulp"
        );
    }
}
