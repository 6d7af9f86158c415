//! The tail of a GPU run reduced on the device, so that only the losses
//! that can be in it cross to the host.
//!
//! Per chunk of losses on the device, `risk_block_sums` sums each block in
//! scenario order (the CPU twin's sums, bit for bit), and a radix selection
//! finds a threshold below which no loss of the chunk can be among the
//! `keep` largest of the run:
//!
//! - losses are compared through their [`key`], an unsigned integer in the
//!   order of `f64::total_cmp`;
//! - the host's [`TopK`] so far gives a floor: once it holds `keep` values,
//!   a loss below its smallest can never enter the tail;
//! - `risk_tail_histogram` counts the keys at or above the floor by their
//!   top [`DIGIT_BITS`] bits; [`plan`] walks the counts from the top to the
//!   digit where the count reaches `keep`, and refines within that digit
//!   (the next 11 bits) while the cut would still take many more losses
//!   than needed, at most [`MAX_PREFIX_BITS`] deep;
//! - `risk_tail_select` copies the losses at or above the threshold into a
//!   candidate buffer; only those cross to the host, into the `Gpu`'s
//!   page-locked staging buffer, and join the [`TopK`].
//!
//! The selection is exact whatever the data: the candidates hold every loss
//! of the chunk that can be in the tail, and the host keeps the `keep`
//! largest, as the CPU twin does, so the [`Tail`] is the same bit for bit as
//! with every loss copied. The select kernel counts what it took and what
//! lies above the floor, and the host checks those counts against the plan
//! before trusting the candidates; a chunk whose every loss may be in the
//! tail (`keep` larger than what the floor leaves), whose candidates would
//! not fit the buffer, or whose check fails, is copied whole instead.
//! [`TailTraffic`] says which happened.

use cudarc::driver::{CudaFunction, CudaSlice, CudaView, LaunchConfig, PushKernelArg};

use super::{SOURCE, TopK};
use crate::driver::DeviceError;
use crate::runtime::Gpu;

/// Bits of the key each histogram counts by (`RISK_DIGIT_BITS`).
pub(super) const DIGIT_BITS: u32 = 11;
/// Counts in a histogram (`RISK_BINS`).
pub(super) const BINS: usize = 1 << DIGIT_BITS;
/// The longest prefix a histogram filters by: four levels of 11 bits, the
/// last cut at 44 bits of the key (a relative width of 2^-33 within a
/// binade: only equal or nearly equal losses share a bucket there).
pub(super) const MAX_PREFIX_BITS: u32 = 3 * DIGIT_BITS;
/// Threads per CUDA block of the tail kernels, and the most blocks of the
/// grid-stride kernels.
const THREADS: u32 = 256;
const MAX_GRID: u32 = 1024;

/// A loss as an unsigned integer in the order of `f64::total_cmp`: negative
/// values (sign bit set) have every bit flipped, the others their sign bit
/// set. `risk_key` in `cuda/risk.cu` is the same.
pub(super) fn key(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    }
}

/// What crossed from the device to the host in a GPU risk run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TailTraffic {
    /// Losses the device computed.
    pub losses: u64,
    /// Losses copied to the host (candidates and whole chunks).
    pub copied: u64,
    /// Chunks copied whole: every loss could be in the tail, or the
    /// candidates would not fit, or the check failed.
    pub whole_chunks: u64,
    /// Selections whose counts disagreed with the plan (then copied whole).
    /// Zero unless a kernel is wrong.
    pub check_failures: u64,
}

/// Where one chunk is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    /// No loss reaches the floor: nothing to copy.
    Nothing,
    /// The losses with a key at least `threshold`: `expected` of them.
    AtLeast { threshold: u64, expected: u64 },
    /// Every loss (too many candidates for the buffer).
    Whole,
}

/// A chunk of losses, wherever it lives, as the selection sees it.
pub(super) trait Chunk {
    /// The number of losses.
    fn len(&self) -> u64;
    /// How many candidates [`Chunk::select`] can hold.
    fn capacity(&self) -> u64;
    /// Per digit (the [`DIGIT_BITS`] bits of the key below its top
    /// `prefix_bits`), the losses whose key is at least `floor` and begins
    /// with `prefix` (any, when `prefix_bits` is 0).
    fn histogram(
        &mut self,
        floor: u64,
        prefix: u64,
        prefix_bits: u32,
    ) -> Result<Vec<u32>, DeviceError>;
    /// Takes the losses with key at least `threshold` as candidates (up to
    /// the capacity); returns how many there were, and how many have a key
    /// at least `floor`.
    fn select(&mut self, floor: u64, threshold: u64) -> Result<(u64, u64), DeviceError>;
    /// Adds the first `n` candidates to `top`.
    fn push_candidates(&mut self, n: u64, top: &mut TopK) -> Result<(), DeviceError>;
    /// Adds every loss to `top`.
    fn push_all(&mut self, top: &mut TopK) -> Result<(), DeviceError>;
}

/// Walking `counts` from the highest digit down, the digit where the count
/// of keys above it (`above` from coarser levels plus the higher digits)
/// plus its own reaches `need`: `(digit, keys above it, keys in it)`. The
/// lowest digit when the counts never reach `need`.
pub(super) fn choose_digit(counts: &[u32], above: u64, need: u64) -> (u64, u64, u64) {
    let mut higher = above;
    for (digit, &count) in counts.iter().enumerate().rev() {
        let count = u64::from(count);
        if higher + count >= need {
            return (digit as u64, higher, count);
        }
        higher += count;
    }
    let lowest = counts.first().map_or(0, |&c| u64::from(c));
    (0, higher - lowest, lowest)
}

/// Where to cut `chunk` so that it keeps every loss that can be among the
/// `keep` largest, given that none below `floor` can.
pub(super) fn plan(chunk: &mut impl Chunk, keep: u64, floor: u64) -> Result<Cut, DeviceError> {
    let capacity = chunk.capacity();
    let mut counts = chunk.histogram(floor, 0, 0)?;
    let at_floor: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if at_floor == 0 {
        return Ok(Cut::Nothing);
    }
    if at_floor <= keep {
        // Every loss at the floor may be in the tail.
        return Ok(if at_floor <= capacity {
            Cut::AtLeast {
                threshold: floor,
                expected: at_floor,
            }
        } else {
            Cut::Whole
        });
    }
    // Refining costs a pass over the chunk on the device; stop once the
    // cut takes at most an eighth more than needed.
    let enough = keep + (keep / 8).max(1 << 16);
    let (mut prefix, mut prefix_bits, mut above) = (0u64, 0u32, 0u64);
    loop {
        let (digit, higher, count) = choose_digit(&counts, above, keep);
        let cut_prefix = prefix << DIGIT_BITS | digit;
        let cut_bits = prefix_bits + DIGIT_BITS;
        let expected = higher + count;
        if expected <= enough || prefix_bits == MAX_PREFIX_BITS {
            if expected > capacity {
                return Ok(Cut::Whole);
            }
            // The smallest key with that prefix, or the floor when it lies
            // inside the bucket (the counts only hold keys at the floor).
            let threshold = (cut_prefix << (64 - cut_bits)).max(floor);
            return Ok(Cut::AtLeast {
                threshold,
                expected,
            });
        }
        (prefix, prefix_bits, above) = (cut_prefix, cut_bits, higher);
        counts = chunk.histogram(floor, prefix, prefix_bits)?;
    }
}

/// Adds to `top` every loss of `chunk` that can be among the `keep`
/// largest of the run, given what `top` holds already.
pub(super) fn select_chunk(
    chunk: &mut impl Chunk,
    keep: usize,
    top: &mut TopK,
    traffic: &mut TailTraffic,
) -> Result<(), DeviceError> {
    traffic.losses += chunk.len();
    if keep == 0 || chunk.len() == 0 {
        return Ok(());
    }
    let keep = keep as u64;
    let floor = top.floor().map_or(0, key);
    let whole = match plan(chunk, keep, floor)? {
        Cut::Nothing => false,
        Cut::Whole => true,
        Cut::AtLeast {
            threshold,
            expected,
        } => {
            let (taken, at_floor) = chunk.select(floor, threshold)?;
            // Everything the tail may need from this chunk is at or above
            // the floor; a threshold above the floor must leave at least
            // `keep` of those (or all of them).
            let holds_the_tail = threshold == floor || taken >= keep.min(at_floor);
            if taken == expected && taken <= chunk.capacity() && holds_the_tail {
                chunk.push_candidates(taken, top)?;
                traffic.copied += taken;
                false
            } else {
                traffic.check_failures += 1;
                true
            }
        }
    };
    if whole {
        chunk.push_all(top)?;
        traffic.copied += chunk.len();
        traffic.whole_chunks += 1;
    }
    Ok(())
}

/// The tail kernels and the device buffers one run's chunks reuse.
pub(super) struct Scratch {
    block_sums: CudaFunction,
    histogram: CudaFunction,
    select: CudaFunction,
    /// device [BINS]
    counts: CudaSlice<u32>,
    /// device [2]: candidates taken, keys at the floor.
    counters: CudaSlice<u32>,
    /// device [capacity or more]
    candidates: CudaSlice<f64>,
    /// How many candidates a chunk may have (else it is copied whole).
    capacity: usize,
}

impl Scratch {
    /// Buffers for chunks of up to `chunk_len` losses: room for half as
    /// many candidates (a chunk with more is copied whole).
    pub(super) fn new(gpu: &Gpu, chunk_len: usize) -> Result<Self, DeviceError> {
        let candidates = gpu.stream().alloc_zeros::<f64>(Self::capacity(chunk_len))?;
        Self::reusing(gpu, candidates, chunk_len)
    }

    /// [`Scratch::new`], the candidates written into `buffer`, a device
    /// buffer the run no longer reads (the historical run's returns, once
    /// its losses are computed: launches on the GPU's one stream run in
    /// order, so the selection writes only after the losses kernel read).
    pub(super) fn reusing(
        gpu: &Gpu,
        buffer: CudaSlice<f64>,
        chunk_len: usize,
    ) -> Result<Self, DeviceError> {
        let stream = gpu.stream();
        Ok(Self {
            block_sums: gpu.function(SOURCE.module, "risk_block_sums")?,
            histogram: gpu.function(SOURCE.module, "risk_tail_histogram")?,
            select: gpu.function(SOURCE.module, "risk_tail_select")?,
            counts: stream.alloc_zeros::<u32>(BINS)?,
            counters: stream.alloc_zeros::<u32>(2)?,
            capacity: Self::capacity(chunk_len).min(buffer.len()),
            candidates: buffer,
        })
    }

    fn capacity(chunk_len: usize) -> usize {
        (chunk_len / 2).max(1)
    }

    /// Device bytes [`Scratch::new`] allocates for `chunk_len`.
    pub(super) fn bytes(chunk_len: usize) -> u64 {
        (4 * (BINS + 2) + 8 * Self::capacity(chunk_len)) as u64
    }

    /// Writes into `sums` the sum of each block of `super::BLOCK` losses of
    /// `losses` (`sums.len()` blocks; those past the losses sum to -0.0,
    /// as an empty block does on the CPU).
    pub(super) fn block_sums(
        &self,
        gpu: &Gpu,
        losses: &CudaView<'_, f64>,
        sums: &mut cudarc::driver::CudaViewMut<'_, f64>,
    ) -> Result<(), DeviceError> {
        let count = losses.len() as u32;
        let n_blocks = sums.len() as u32;
        if n_blocks == 0 {
            return Ok(());
        }
        let mut launch = gpu.stream().launch_builder(&self.block_sums);
        launch.arg(&count).arg(&n_blocks).arg(losses).arg(sums);
        // One warp per block, 8 per CUDA block.
        let config = LaunchConfig {
            grid_dim: (n_blocks.div_ceil(THREADS / 32), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match `risk_block_sums(u32, u32, const
        // double*, double*)`; `losses` holds `count` values and `sums`
        // `n_blocks`; the kernel reads block b's losses below `count` only.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(config)?;
        }
        Ok(())
    }

    /// The device's part of every chunk: sums its blocks into `sums` (timed
    /// as kernel time) and adds the losses that can be in the tail to `top`.
    pub(super) fn reduce(
        &mut self,
        gpu: &Gpu,
        losses: CudaView<'_, f64>,
        sums: &mut cudarc::driver::CudaViewMut<'_, f64>,
        keep: usize,
        top: &mut TopK,
        traffic: &mut TailTraffic,
    ) -> Result<(), DeviceError> {
        let timer = gpu.kernel_timer()?;
        self.block_sums(gpu, &losses, sums)?;
        timer.finish()?;
        select_chunk(&mut self.chunk(gpu, losses), keep, top, traffic)
    }

    /// The chunk `losses` of a run on `gpu`, for [`select_chunk`].
    pub(super) fn chunk<'a>(
        &'a mut self,
        gpu: &'a Gpu,
        losses: CudaView<'a, f64>,
    ) -> DeviceChunk<'a> {
        DeviceChunk {
            gpu,
            scratch: self,
            losses,
        }
    }
}

/// A grid-stride launch over `count` values.
fn grid_stride(count: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (count.div_ceil(THREADS).clamp(1, MAX_GRID), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A chunk of losses on the device.
pub(super) struct DeviceChunk<'a> {
    gpu: &'a Gpu,
    scratch: &'a mut Scratch,
    /// device [len]
    losses: CudaView<'a, f64>,
}

impl Chunk for DeviceChunk<'_> {
    fn len(&self) -> u64 {
        self.losses.len() as u64
    }

    fn capacity(&self) -> u64 {
        self.scratch.capacity as u64
    }

    fn histogram(
        &mut self,
        floor: u64,
        prefix: u64,
        prefix_bits: u32,
    ) -> Result<Vec<u32>, DeviceError> {
        assert!(prefix_bits <= MAX_PREFIX_BITS && prefix_bits.is_multiple_of(DIGIT_BITS));
        let stream = self.gpu.stream();
        let count = self.losses.len() as u32;
        stream.memset_zeros(&mut self.scratch.counts)?;
        let timer = self.gpu.kernel_timer()?;
        let mut launch = stream.launch_builder(&self.scratch.histogram);
        launch
            .arg(&count)
            .arg(&self.losses)
            .arg(&floor)
            .arg(&prefix)
            .arg(&prefix_bits)
            .arg(&mut self.scratch.counts);
        // SAFETY: the arguments match `risk_tail_histogram(u32, const
        // double*, u64, u64, u32, u32*)`; `losses` holds `count` values and
        // `counts` RISK_BINS; prefix_bits is a multiple of 11 up to 33
        // (asserted), so every shift in the kernel is below 64.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(grid_stride(count))?;
        }
        timer.finish()?;
        Ok(stream.clone_dtoh(&self.scratch.counts)?)
    }

    fn select(&mut self, floor: u64, threshold: u64) -> Result<(u64, u64), DeviceError> {
        let stream = self.gpu.stream();
        let count = self.losses.len() as u32;
        let capacity = self.scratch.capacity as u32;
        stream.memset_zeros(&mut self.scratch.counters)?;
        let timer = self.gpu.kernel_timer()?;
        let mut launch = stream.launch_builder(&self.scratch.select);
        launch
            .arg(&count)
            .arg(&self.losses)
            .arg(&floor)
            .arg(&threshold)
            .arg(&capacity)
            .arg(&mut self.scratch.candidates)
            .arg(&mut self.scratch.counters);
        // SAFETY: the arguments match `risk_tail_select(u32, const double*,
        // u64, u64, u32, double*, u32*)`; `losses` holds `count` values,
        // `candidates` at least `capacity` (the kernel writes no slot past
        // it) and
        // `counters` 2; blocks of 256 threads, a multiple of 32.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(grid_stride(count))?;
        }
        timer.finish()?;
        let counters = stream.clone_dtoh(&self.scratch.counters)?;
        Ok((u64::from(counters[0]), u64::from(counters[1])))
    }

    fn push_candidates(&mut self, n: u64, top: &mut TopK) -> Result<(), DeviceError> {
        let candidates = self.scratch.candidates.slice(..n as usize);
        self.gpu.read_back(&candidates, |values| top.extend(values))
    }

    fn push_all(&mut self, top: &mut TopK) -> Result<(), DeviceError> {
        self.gpu
            .read_back(&self.losses, |values| top.extend(values))
    }
}

/// The same selection over losses on the host: what the unit tests run
/// [`select_chunk`] and [`plan`] against, with the kernels' semantics.
#[cfg(test)]
pub(super) struct HostChunk<'a> {
    pub(super) losses: &'a [f64],
    pub(super) capacity: u64,
    pub(super) candidates: Vec<f64>,
    /// Histogram passes run.
    pub(super) passes: u32,
}

#[cfg(test)]
impl Chunk for HostChunk<'_> {
    fn len(&self) -> u64 {
        self.losses.len() as u64
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn histogram(
        &mut self,
        floor: u64,
        prefix: u64,
        prefix_bits: u32,
    ) -> Result<Vec<u32>, DeviceError> {
        assert!(prefix_bits <= MAX_PREFIX_BITS && prefix_bits.is_multiple_of(DIGIT_BITS));
        self.passes += 1;
        let shift = 64 - prefix_bits - DIGIT_BITS;
        let mut counts = vec![0u32; BINS];
        for &x in self.losses {
            let k = key(x);
            if k >= floor && (prefix_bits == 0 || k >> (64 - prefix_bits) == prefix) {
                counts[(k >> shift) as usize & (BINS - 1)] += 1;
            }
        }
        Ok(counts)
    }

    fn select(&mut self, floor: u64, threshold: u64) -> Result<(u64, u64), DeviceError> {
        self.candidates.clear();
        let mut taken = 0;
        let mut at_floor = 0;
        for &x in self.losses {
            if key(x) >= threshold {
                if taken < self.capacity {
                    self.candidates.push(x);
                }
                taken += 1;
            }
            if key(x) >= floor {
                at_floor += 1;
            }
        }
        Ok((taken, at_floor))
    }

    fn push_candidates(&mut self, n: u64, top: &mut TopK) -> Result<(), DeviceError> {
        top.extend(&self.candidates[..n as usize]);
        Ok(())
    }

    fn push_all(&mut self, top: &mut TopK) -> Result<(), DeviceError> {
        top.extend(self.losses);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::philox;

    #[test]
    fn keys_order_as_total_cmp() {
        let values = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -1.0,
            -f64::MIN_POSITIVE,
            -5e-324,
            -0.0,
            0.0,
            5e-324,
            f64::MIN_POSITIVE,
            1.0,
            1.0 + f64::EPSILON,
            2.5,
            1e300,
            f64::INFINITY,
            f64::NAN,
            -f64::NAN,
        ];
        for a in values {
            for b in values {
                assert_eq!(key(a).cmp(&key(b)), a.total_cmp(&b), "{a:e} {b:e}");
            }
        }
    }

    #[test]
    fn the_digit_is_where_the_count_from_the_top_reaches_the_need() {
        let check = |counts: &[u32], above: u64, need: u64, expect: (u64, u64, u64)| {
            assert_eq!(
                choose_digit(counts, above, need),
                expect,
                "{counts:?} {above} {need}"
            );
        };
        check(&[5, 0, 3, 2], 0, 1, (3, 0, 2));
        check(&[5, 0, 3, 2], 0, 2, (3, 0, 2));
        check(&[5, 0, 3, 2], 0, 3, (2, 2, 3));
        check(&[5, 0, 3, 2], 0, 6, (0, 5, 5));
        // `above` counts keys in higher buckets of a coarser level.
        check(&[5, 0, 3, 2], 4, 6, (3, 4, 2));
        check(&[5, 0, 3, 2], 4, 7, (2, 6, 3));
        // Never reached (cannot happen on consistent counts): everything.
        check(&[5, 0, 3, 2], 0, 11, (0, 5, 5));
    }

    /// Losses around `center`, spread by `scale`, from Philox (any fixed
    /// data will do).
    fn losses(n: usize, seed: u64, center: f64, scale: f64) -> Vec<f64> {
        (0..n as u64)
            .map(|i| {
                let w = philox::philox4x32_10(philox::counter(i, 0), philox::key(seed));
                center + scale * f64::from(philox::normal_pair(w[0], w[1]).0)
            })
            .collect()
    }

    fn bits(values: &[f64]) -> Vec<u64> {
        values.iter().map(|x| x.to_bits()).collect()
    }

    /// Runs the selection over `chunks` of `data` and checks the tail is the
    /// one of every loss, bit for bit; returns what crossed.
    fn check_tail(data: &[f64], chunk: usize, capacity: u64, keep: usize) -> (TailTraffic, u32) {
        let mut top = TopK::new(keep);
        let mut traffic = TailTraffic::default();
        let mut passes = 0;
        for part in data.chunks(chunk) {
            let mut host = HostChunk {
                losses: part,
                capacity,
                candidates: Vec::new(),
                passes: 0,
            };
            select_chunk(&mut host, keep, &mut top, &mut traffic).unwrap();
            passes += host.passes;
        }
        let mut all = TopK::new(keep);
        all.extend(data);
        assert_eq!(bits(&top.finish()), bits(&all.finish()), "keep {keep}");
        assert_eq!(traffic.losses, data.len() as u64);
        assert_eq!(traffic.check_failures, 0);
        (traffic, passes)
    }

    #[test]
    fn the_selected_tail_is_the_tail_of_every_loss() {
        let data = losses(300_000, 1, 1_000.0, 250.0);
        // 5 % and 1 % of the scenarios: far fewer losses cross than there are.
        for keep in [15_000, 3_000] {
            let (traffic, _) = check_tail(&data, 100_000, 50_000, keep);
            assert!(traffic.copied < data.len() as u64 / 4, "{traffic:?}");
            assert_eq!(traffic.whole_chunks, 0, "{traffic:?}");
        }
        // One loss, none, and a tail larger than a chunk (whole chunks until
        // the floor takes over).
        check_tail(&data, 100_000, 50_000, 1);
        let (traffic, passes) = check_tail(&data, 100_000, 50_000, 0);
        assert_eq!((traffic.copied, passes), (0, 0));
        let (traffic, _) = check_tail(&data, 100_000, 50_000, 250_000);
        assert!(traffic.whole_chunks >= 2, "{traffic:?}");
        // Losses of both signs, and a partial last chunk.
        let mixed = losses(123_457, 2, 0.0, 1e4);
        check_tail(&mixed, 50_000, 25_000, 6_000);
        check_tail(&mixed, 50_000, 25_000, 123_457);
    }

    #[test]
    fn ties_and_narrow_losses_refine_or_copy_whole() {
        // Every loss equal (zero weights): no cut separates them, so each
        // chunk either fits the buffer or is copied whole; the tail holds
        // `keep` copies.
        let equal = vec![-0.0; 40_000];
        let (traffic, _) = check_tail(&equal, 10_000, 5_000, 700);
        assert_eq!(traffic.check_failures, 0);
        let mut top = TopK::new(3);
        top.extend(&equal[..10]);
        assert_eq!(bits(&top.finish()), bits(&[-0.0; 3]));
        // Losses within a few ulps of each other: the plan refines past the
        // first 11 bits.
        let narrow: Vec<f64> = (0..100_000u64)
            .map(|i| 1_000.0 + (i % 977) as f64 * 1e-10)
            .collect();
        let (_, passes) = check_tail(&narrow, 100_000, 50_000, 1_000);
        assert!(passes > 1, "{passes}");
        // A buffer too small for the candidates: copied whole, still exact.
        let data = losses(50_000, 3, 10.0, 1.0);
        let (traffic, _) = check_tail(&data, 50_000, 100, 5_000);
        assert_eq!(traffic.whole_chunks, 1);
    }

    #[test]
    fn the_floor_leaves_later_chunks_few_candidates() {
        let data = losses(400_000, 4, 0.0, 1.0);
        let (traffic, _) = check_tail(&data, 50_000, 25_000, 2_000);
        // 8 chunks; after the first, only losses above the 2 000th largest
        // so far cross.
        assert!(traffic.copied < 40_000, "{traffic:?}");
    }
}
