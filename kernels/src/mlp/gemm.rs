//! GEMM: C = A B (+ bias, activation), the one kernel every pass runs.
//!
//! Each output C(i, j) is one register lane that starts at 0 and adds
//! A(i, p) * B(p, j) for p = 0, 1, ..., depth - 1 in that order, a multiply
//! then an add (no FMA); the bias and activation come after. So C(i, j)
//! depends only on row i of A and column j of B, never on how rows are split
//! into blocks or threads, nor on the SIMD width the CPU has: the same bits
//! everywhere. Depth is not blocked (a packed panel of B is depth x 32
//! floats, 32 KB at depth 256, in L1 or L2), which keeps that order trivial.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::train::scale_by_derivative;
use super::{Activation, Layer};
use crate::philox;

/// An `rows x depth` matrix read through strides, so that transposed
/// operands (`W^T`, `delta^T`) need no copy: A(i, p) is
/// `data[i * row_stride + p * depth_stride]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Strided<'a> {
    pub(super) data: &'a [f32],
    pub(super) rows: usize,
    pub(super) depth: usize,
    pub(super) row_stride: usize,
    pub(super) depth_stride: usize,
}

impl Strided<'_> {
    #[inline(always)]
    fn at(&self, row: usize, p: usize) -> f32 {
        self.data[row * self.row_stride + p * self.depth_stride]
    }
}

/// The register tile of a SIMD build: `MR` rows of A by `NR` columns of B
/// held in `MR x NR / lanes` vector registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Kernel {
    pub(super) simd: philox::Simd,
}

impl Kernel {
    pub(super) fn detect() -> Kernel {
        Kernel {
            simd: philox::simd(),
        }
    }

    /// Columns per packed panel of B: two registers' worth under AVX-512,
    /// two under AVX2, four SSE registers otherwise.
    fn nr(self) -> usize {
        match self.simd {
            philox::Simd::Avx512 => 32,
            _ => 16,
        }
    }
}

/// B (`depth x cols`) packed for [`Kernel`]: panel q holds columns
/// `q * nr .. q * nr + nr` as `depth` rows of `nr` contiguous floats, zero
/// past `cols`, so the inner loop reads one panel front to back.
#[derive(Debug)]
pub(super) struct Packed {
    data: Vec<f32>,
    depth: usize,
    cols: usize,
    nr: usize,
}

impl Packed {
    /// Packs B(p, j) = `data[p * p_stride + j * col_stride]`.
    pub(super) fn pack(kernel: Kernel, source: Strided<'_>) -> Packed {
        let mut packed = Packed::empty();
        packed.repack(kernel, source);
        packed
    }

    /// Nothing packed yet: a buffer for [`Packed::repack`].
    pub(super) fn empty() -> Packed {
        Packed {
            data: Vec::new(),
            depth: 0,
            cols: 0,
            nr: 0,
        }
    }

    /// Packs `source` into this buffer, reusing its memory: training packs
    /// every weight matrix on every step, and fresh buffers of that size
    /// cost more in page faults than the copy itself.
    pub(super) fn repack(&mut self, kernel: Kernel, source: Strided<'_>) {
        // `source` is read as `cols x depth` (rows are B's columns).
        let (cols, depth, nr) = (source.rows, source.depth, kernel.nr());
        let panels = cols.div_ceil(nr);
        reuse_for_overwrite(&mut self.data, panels * depth * nr);
        for (q, panel) in self.data.chunks_exact_mut(depth * nr).enumerate() {
            let valid = cols.saturating_sub(q * nr).min(nr);
            if source.depth_stride == 1 {
                // Each column is contiguous in `source`: read it front to
                // back, write it down the panel (which stays in L1).
                for j in 0..valid {
                    let start = (q * nr + j) * source.row_stride;
                    let column = &source.data[start..start + depth];
                    for (row, value) in panel.chunks_exact_mut(nr).zip(column) {
                        row[j] = *value;
                    }
                }
            } else if source.row_stride == 1 {
                // Each row of B is contiguous: copy its panel's stretch.
                for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                    let start = p * source.depth_stride + q * nr;
                    row[..valid].copy_from_slice(&source.data[start..start + valid]);
                }
            } else {
                for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                    for (j, slot) in row.iter_mut().enumerate().take(valid) {
                        *slot = source.at(q * nr + j, p);
                    }
                }
            }
            if valid < nr {
                for row in panel.chunks_exact_mut(nr) {
                    row[valid..].fill(0.0);
                }
            }
        }
        self.depth = depth;
        self.cols = cols;
        self.nr = nr;
    }

    fn panel<const NR: usize>(&self, q: usize) -> &[[f32; NR]] {
        let start = q * self.depth * NR;
        self.data[start..start + self.depth * NR]
            .as_chunks::<NR>()
            .0
    }
}

/// Gives `buffer` exactly `len` elements, keeping its memory: the contents
/// are left as they were (stale), for callers that overwrite every element.
pub(super) fn reuse_for_overwrite(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() != len {
        buffer.resize(len, 0.0);
    }
}

/// What happens to `C(i, j)` after its sum: bias added, then the hidden
/// activation, then (backpropagation) the activation's derivative.
#[derive(Debug, Clone, Copy)]
pub(super) struct Epilogue<'a> {
    pub(super) bias: Option<&'a [f32]>,
    pub(super) activation: Option<Activation>,
    pub(super) derivative: Option<Derivative<'a>>,
}

/// `C(i, j) *= activation'(z)`, read from `activated(i, j) = activation(z)`
/// (row-major, C's shape): backpropagation through a hidden layer, applied
/// as each delta leaves the GEMM instead of in a second pass over it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Derivative<'a> {
    pub(super) activation: Activation,
    pub(super) activated: &'a [f32],
}

impl Epilogue<'_> {
    pub(super) const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        activation: None,
        derivative: None,
    };

    /// `row` and `col` index C as a whole (not the block being computed).
    #[inline(always)]
    fn apply(&self, sum: f32, row: usize, col: usize, cols: usize) -> f32 {
        let value = match self.bias {
            Some(bias) => sum + bias[col],
            None => sum,
        };
        let value = match self.activation {
            None => value,
            Some(activation) => activate(activation, value),
        };
        match self.derivative {
            None => value,
            Some(derivative) => scale_by_derivative(
                derivative.activation,
                value,
                derivative.activated[row * cols + col],
            ),
        }
    }
}

#[inline(always)]
pub(super) fn activate(activation: Activation, value: f32) -> f32 {
    match activation {
        // Written as a comparison (not `max`) so that NaN propagates.
        Activation::Relu => {
            if value < 0.0 {
                0.0
            } else {
                value
            }
        }
        Activation::Tanh => value.tanh(),
    }
}

/// Rows `rows` of `C = A B` into `out` (`rows.len() x b.cols`, row-major).
pub(super) fn gemm_rows(
    kernel: Kernel,
    a: Strided<'_>,
    rows: Range<usize>,
    b: &Packed,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
) {
    debug_assert_eq!(b.nr, kernel.nr());
    debug_assert_eq!(a.depth, b.depth);
    debug_assert_eq!(out.len(), rows.len() * b.cols);
    // The scratch is taken here, outside the SIMD builds: a closure passed
    // to `LocalKey::with` is compiled without their target features. Nothing
    // below reaches rayon or another GEMM, so the borrow is never taken twice.
    PACKED_A.with_borrow_mut(|scratch| match kernel.simd {
        // SAFETY: `kernel.simd` comes from `philox::simd`, so the CPU has
        // the features these builds enable.
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        philox::Simd::Avx512 => unsafe { gemm_rows_avx512(a, rows, b, epilogue, out, scratch) },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        philox::Simd::Avx2 => unsafe { gemm_rows_avx2(a, rows, b, epilogue, out, scratch) },
        _ => gemm_rows_tiled::<3, 16>(a, rows, b, epilogue, out, scratch),
    });
}

thread_local! {
    /// Each thread's packed rows of A, kept from one GEMM to the next so
    /// that the many small GEMMs of training do not map fresh memory.
    static PACKED_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// [`gemm_rows`] for AVX-512: 8 x 32 tile, 16 accumulator registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512dq,avx512bw")]
pub(super) fn gemm_rows_avx512(
    a: Strided<'_>,
    rows: Range<usize>,
    b: &Packed,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    gemm_rows_tiled::<8, 32>(a, rows, b, epilogue, out, scratch);
}

/// [`gemm_rows`] for AVX2: 6 x 16 tile, 12 accumulator registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) fn gemm_rows_avx2(
    a: Strided<'_>,
    rows: Range<usize>,
    b: &Packed,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    gemm_rows_tiled::<6, 16>(a, rows, b, epilogue, out, scratch);
}

/// The GEMM of one build; `scratch` holds the packed rows of A.
#[inline(always)]
pub(super) fn gemm_rows_tiled<const MR: usize, const NR: usize>(
    a: Strided<'_>,
    rows: Range<usize>,
    b: &Packed,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let depth = a.depth;
    let packed_a = pack_a::<MR>(a, rows.clone(), scratch);
    let groups = rows.len().div_ceil(MR);
    // Panel outer, row group inner: one panel of B stays in L1 while the
    // row block's packed A (a few tens of KB) streams from L2.
    for q in 0..b.cols.div_ceil(NR) {
        let panel = b.panel::<NR>(q);
        let cols = (b.cols - q * NR).min(NR);
        for g in 0..groups {
            let acc = micro_tile::<MR, NR>(&packed_a[g * depth..(g + 1) * depth], panel);
            let valid_rows = (rows.len() - g * MR).min(MR);
            for (r, acc_row) in acc.iter().enumerate().take(valid_rows) {
                let start = (g * MR + r) * b.cols + q * NR;
                let row = rows.start + g * MR + r;
                for (j, (slot, sum)) in out[start..start + cols].iter_mut().zip(acc_row).enumerate()
                {
                    *slot = epilogue.apply(*sum, row, q * NR + j, b.cols);
                }
            }
        }
    }
}

/// Rows `rows` of A as groups of `MR` rows, each `depth` steps of `MR`
/// floats (zero past the last row), the order the micro tile reads them,
/// written into `scratch`.
#[inline(always)]
pub(super) fn pack_a<'s, const MR: usize>(
    a: Strided<'_>,
    rows: Range<usize>,
    scratch: &'s mut Vec<f32>,
) -> &'s [[f32; MR]] {
    let groups = rows.len().div_ceil(MR);
    reuse_for_overwrite(scratch, groups * a.depth * MR);
    let packed = scratch.as_chunks_mut::<MR>().0;
    for (g, group) in packed
        .chunks_exact_mut(a.depth.max(1))
        .enumerate()
        .take(groups)
    {
        let first = rows.start + g * MR;
        let valid = (rows.end - first).min(MR);
        for (p, step) in group.iter_mut().enumerate() {
            if a.row_stride == 1 && valid == MR {
                // The group's rows are adjacent floats (a transposed
                // operand): one copy per step.
                let start = first + p * a.depth_stride;
                step.copy_from_slice(&a.data[start..start + MR]);
            } else {
                for (r, slot) in step.iter_mut().enumerate() {
                    *slot = if r < valid { a.at(first + r, p) } else { 0.0 };
                }
            }
        }
    }
    packed
}

/// The `MR x NR` sums of one row group against one panel: the innermost
/// loop. Each row's accumulator is its own local array of `NR` floats (one
/// or two vector registers): LLVM keeps such small arrays in registers and
/// turns `row_step` into lane-wise multiplies and adds, where one `MR x NR`
/// array would stay in memory.
#[inline(always)]
pub(super) fn micro_tile<const MR: usize, const NR: usize>(
    a: &[[f32; MR]],
    b: &[[f32; NR]],
) -> [[f32; NR]; MR] {
    // Up to 8 rows, unrolled by hand; `MR` picks how many are live.
    macro_rules! tile {
        ($($acc:ident $r:literal),*) => {{
            $(let mut $acc = [0.0f32; NR];)*
            for (a_step, b_step) in a.iter().zip(b) {
                $(if $r < MR { $acc = row_step($acc, a_step[$r], b_step); })*
            }
            let rows = [$($acc),*];
            std::array::from_fn(|r| rows[r])
        }};
    }
    const { assert!(MR <= 8) };
    tile!(acc0 0, acc1 1, acc2 2, acc3 3, acc4 4, acc5 5, acc6 6, acc7 7)
}

/// `acc + scale * b`, lane by lane (a multiply, then an add: no FMA).
#[inline(always)]
pub(super) fn row_step<const NR: usize>(
    mut acc: [f32; NR],
    scale: f32,
    b: &[f32; NR],
) -> [f32; NR] {
    for j in 0..NR {
        acc[j] += scale * b[j];
    }
    acc
}

/// `C = A B` with rows split into fixed blocks of `block_rows` across the
/// rayon pool (the split does not change any bit of C).
pub(super) fn par_gemm(
    kernel: Kernel,
    a: Strided<'_>,
    b: &Packed,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    block_rows: usize,
) {
    out.par_chunks_mut(block_rows * b.cols)
        .enumerate()
        .for_each(|(block, chunk)| {
            let first = block * block_rows;
            let rows = first..first + chunk.len() / b.cols;
            gemm_rows(kernel, a, rows, b, epilogue, chunk);
        });
}

/// A layer's `W^T` (`inputs x outputs`) packed as the B of `x W^T`.
pub(super) fn pack_weights_transposed(kernel: Kernel, layer: &Layer) -> Packed {
    Packed::pack(kernel, weights_transposed(layer))
}

/// A layer's `W^T` as a B operand: B(p = input, j = output) =
/// `W[output * inputs + input]`.
pub(super) fn weights_transposed(layer: &Layer) -> Strided<'_> {
    Strided {
        data: &layer.weight,
        rows: layer.outputs,
        depth: layer.inputs,
        row_stride: layer.inputs,
        depth_stride: 1,
    }
}

/// A row-major `rows x width` matrix as an A operand.
pub(super) fn row_major(data: &[f32], rows: usize, width: usize) -> Strided<'_> {
    Strided {
        data,
        rows,
        depth: width,
        row_stride: width,
        depth_stride: 1,
    }
}
