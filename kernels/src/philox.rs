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
#[inline(always)]
pub fn normal_pair(a: u32, b: u32) -> (f32, f32) {
    let u1 = u01(a);
    let u2 = u01(b);
    let r = (-2.0 * u1.ln()).sqrt();
    let theta = std::f32::consts::TAU * u2;
    (r * theta.cos(), r * theta.sin())
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

    #[test]
    fn uniforms_stay_inside_the_open_interval() {
        assert!(u01(0) > 0.0);
        assert!(u01(u32::MAX) < 1.0);
        let (a, b) = normal_pair(0, 0);
        assert!(a.is_finite() && b.is_finite());
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
}
