//! The layers' GEMMs through column-major cuBLAS.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm as _, GemmConfig};
use cudarc::driver::{CudaView, CudaViewMut};

use super::blas_error;
use crate::driver::DeviceError;

/// A column-major GEMM `C = op(A) op(B)` (alpha 1, beta 0), with the
/// buffers' lengths checked against the shapes before cuBLAS reads them.
pub(super) struct Gemm {
    /// Whether A, B are read transposed.
    pub(super) transpose_a: bool,
    pub(super) transpose_b: bool,
    /// C is m x n; op(A) m x k; op(B) k x n.
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) lda: usize,
    pub(super) ldb: usize,
    pub(super) ldc: usize,
}

impl Gemm {
    /// `Y^T = W X^T`: layer forward, `Y = X W^T` row-major.
    pub(super) fn forward(batch: usize, inputs: usize, outputs: usize) -> Self {
        Gemm {
            transpose_a: true,
            transpose_b: false,
            m: outputs,
            n: batch,
            k: inputs,
            lda: inputs,
            ldb: inputs,
            ldc: outputs,
        }
    }

    /// `dW^T = X^T dZ`: the weight gradient `dW = dZ^T X` row-major, A = X,
    /// B = dZ.
    pub(super) fn weight_gradient(batch: usize, inputs: usize, outputs: usize) -> Self {
        Gemm {
            transpose_a: false,
            transpose_b: true,
            m: inputs,
            n: outputs,
            k: batch,
            lda: inputs,
            ldb: outputs,
            ldc: inputs,
        }
    }

    /// `dX^T = W^T dZ^T`: the input gradient `dX = dZ W` row-major, A = W,
    /// B = dZ.
    pub(super) fn input_gradient(batch: usize, inputs: usize, outputs: usize) -> Self {
        Gemm {
            transpose_a: false,
            transpose_b: false,
            m: inputs,
            n: batch,
            k: outputs,
            lda: inputs,
            ldb: outputs,
            ldc: inputs,
        }
    }

    pub(super) fn run(
        &self,
        blas: &CudaBlas,
        a: &CudaView<'_, f32>,
        b: &CudaView<'_, f32>,
        c: &mut CudaViewMut<'_, f32>,
    ) -> Result<(), DeviceError> {
        // Column-major storage: A is lda x (columns of A as stored).
        let a_columns = if self.transpose_a { self.m } else { self.k };
        let b_columns = if self.transpose_b { self.k } else { self.n };
        assert!(a.len() >= self.lda * a_columns, "GEMM: A is too short");
        assert!(b.len() >= self.ldb * b_columns, "GEMM: B is too short");
        assert!(c.len() >= self.ldc * self.n, "GEMM: C is too short");
        let op = |t| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        // Every dimension is at most a layer width or a batch size, both
        // checked to fit i32 by `validate` and `check_rows`.
        let int = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
        let config = GemmConfig {
            transa: op(self.transpose_a),
            transb: op(self.transpose_b),
            m: int(self.m),
            n: int(self.n),
            k: int(self.k),
            alpha: 1.0f32,
            lda: int(self.lda),
            ldb: int(self.ldb),
            beta: 0.0f32,
            ldc: int(self.ldc),
        };
        // SAFETY: the asserts above keep every access cuBLAS makes inside
        // the three buffers, which live on the handle's stream.
        #[allow(unsafe_code)]
        unsafe { blas.gemm(config, a, b, c) }.map_err(blas_error)
    }
}
