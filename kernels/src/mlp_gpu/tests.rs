use super::gemm::Gemm;
use super::step::adam_corrections;
use super::train::check_optimizer;
use super::*;
use crate::mlp::{Activation, Optimizer};

/// `C = op(A) op(B)` read column-major as cuBLAS reads it, in f64.
fn column_major_gemm(gemm: &Gemm, a: &[f32], b: &[f32]) -> Vec<f64> {
    let at = |i: usize, p: usize| {
        let (row, col) = if gemm.transpose_a { (p, i) } else { (i, p) };
        f64::from(a[col * gemm.lda + row])
    };
    let bt = |p: usize, j: usize| {
        let (row, col) = if gemm.transpose_b { (j, p) } else { (p, j) };
        f64::from(b[col * gemm.ldb + row])
    };
    let mut c = vec![0.0; gemm.ldc * gemm.n];
    for j in 0..gemm.n {
        for i in 0..gemm.m {
            c[j * gemm.ldc + i] = (0..gemm.k).map(|p| at(i, p) * bt(p, j)).sum();
        }
    }
    c
}

/// Row-major `rows x cols` of distinct values.
fn matrix(rows: usize, cols: usize, salt: f32) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| ((i as f32 * 0.37 + salt).sin() * 4.0).round() / 4.0)
        .collect()
}

/// Element (r, c) of a row-major matrix of `cols` columns.
fn get(m: &[f32], cols: usize, r: usize, c: usize) -> f64 {
    f64::from(m[r * cols + c])
}

const BATCH: usize = 5;
const INPUTS: usize = 3;
const OUTPUTS: usize = 4;

/// The column-major products land, read row-major, on `Y = X W^T`.
#[test]
fn forward_gemm_is_x_times_w_transposed() {
    let x = matrix(BATCH, INPUTS, 0.1);
    let w = matrix(OUTPUTS, INPUTS, 0.7);
    let y = column_major_gemm(&Gemm::forward(BATCH, INPUTS, OUTPUTS), &w, &x);
    for r in 0..BATCH {
        for o in 0..OUTPUTS {
            let expect: f64 = (0..INPUTS)
                .map(|i| get(&x, INPUTS, r, i) * get(&w, INPUTS, o, i))
                .sum();
            assert_eq!(y[r * OUTPUTS + o], expect, "Y[{r}, {o}]");
        }
    }
}

/// `dW = dZ^T X`, row-major outputs x inputs.
#[test]
fn weight_gradient_gemm_is_delta_transposed_times_x() {
    let x = matrix(BATCH, INPUTS, 0.3);
    let dz = matrix(BATCH, OUTPUTS, 1.1);
    let dw = column_major_gemm(&Gemm::weight_gradient(BATCH, INPUTS, OUTPUTS), &x, &dz);
    for o in 0..OUTPUTS {
        for i in 0..INPUTS {
            let expect: f64 = (0..BATCH)
                .map(|r| get(&dz, OUTPUTS, r, o) * get(&x, INPUTS, r, i))
                .sum();
            assert_eq!(dw[o * INPUTS + i], expect, "dW[{o}, {i}]");
        }
    }
}

/// `dX = dZ W`, row-major batch x inputs.
#[test]
fn input_gradient_gemm_is_delta_times_w() {
    let w = matrix(OUTPUTS, INPUTS, 0.9);
    let dz = matrix(BATCH, OUTPUTS, 2.3);
    let dx = column_major_gemm(&Gemm::input_gradient(BATCH, INPUTS, OUTPUTS), &w, &dz);
    for r in 0..BATCH {
        for i in 0..INPUTS {
            let expect: f64 = (0..OUTPUTS)
                .map(|o| get(&dz, OUTPUTS, r, o) * get(&w, INPUTS, o, i))
                .sum();
            assert_eq!(dx[r * INPUTS + i], expect, "dX[{r}, {i}]");
        }
    }
}

#[test]
fn the_flat_layout_packs_each_layer_weights_then_biases() {
    let mlp = Mlp::random(&[3, 5, 2], Activation::Relu, 1).expect("model");
    let (slots, total) = layout(&mlp);
    assert_eq!(slots[0].weight, 0..15);
    assert_eq!(slots[0].bias, 15..20);
    assert_eq!(slots[1].weight, 20..30);
    assert_eq!(slots[1].bias, 30..32);
    assert_eq!(4 * total as u64 + 4 * 6, mlp.parameter_bytes());
}

#[test]
fn adam_corrections_are_the_cpu_twins() {
    let (c1, c2) = adam_corrections(0.9, 0.999, 1);
    assert_eq!(c1, (1.0 / (1.0 - f64::from(0.9f32))) as f32);
    assert_eq!(c2, (1.0 / (1.0 - f64::from(0.999f32))) as f32);
    let (c1, _) = adam_corrections(0.9, 0.999, 1000);
    assert!((c1 - 1.0).abs() < 1e-6);
}

#[test]
fn bad_lengths_and_optimisers_are_the_cpu_twins_errors() {
    let err = check_rows("inputs", &[0.0; 7], 2, 4).unwrap_err();
    assert!(
        matches!(
            err,
            GpuMlpError::Invalid(MlpError::BadLength {
                expected: 8,
                got: 7,
                ..
            })
        ),
        "{err}"
    );
    assert!(check_rows("inputs", &[0.0; 8], 2, 4).is_ok());
    let bad = Optimizer::Sgd {
        lr: f32::NAN,
        momentum: 0.9,
    };
    assert!(matches!(
        check_optimizer(&bad),
        Err(MlpError::BadTraining(_))
    ));
    assert!(check_optimizer(&Optimizer::adam(1e-3)).is_ok());
    let mut broken = Mlp::random(&[3, 5, 2], Activation::Tanh, 1).expect("model");
    broken.layers[1].inputs = 4;
    assert!(matches!(validate(&broken), Err(GpuMlpError::Invalid(_))));
}

/// A worker keeps resident models in a cache shared by its threads.
#[test]
fn a_resident_model_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<GpuMlp>();
}

#[test]
fn workspace_estimates_count_every_buffer() {
    let mlp = Mlp::random(&[64, 256, 256, 1], Activation::Relu, 1).expect("model");
    // raw and normalised inputs, then each layer's output.
    assert_eq!(
        GpuMlp::forward_bytes(&mlp, 1000),
        4 * 1000 * (64 + 64 + 256 + 256 + 1)
    );
    let train = GpuMlp::train_bytes(&mlp, 65_536, 512);
    assert!(train > GpuMlp::forward_bytes(&mlp, 512) + 3 * mlp.parameter_bytes());
}

#[test]
fn cublas_statuses_are_classified_by_what_they_mean_for_the_device() {
    use crate::driver::Fault;
    use cudarc::cublas::sys::cublasStatus_t as S;
    let check = |status: S, expect: Fault| {
        assert_eq!(classify_blas(status), expect, "{status:?}");
        let err = blas_error(cudarc::cublas::result::CublasError(status));
        assert_eq!(err.fault, expect, "{status:?}");
        assert!(err.message.starts_with("cuBLAS: "), "{}", err.message);
    };
    // After a kernel fault or with the GPU gone (issue 19).
    check(S::CUBLAS_STATUS_EXECUTION_FAILED, Fault::Sticky);
    check(S::CUBLAS_STATUS_INTERNAL_ERROR, Fault::Sticky);
    check(S::CUBLAS_STATUS_ALLOC_FAILED, Fault::OutOfMemory);
    check(S::CUBLAS_STATUS_INVALID_VALUE, Fault::Other);
    check(S::CUBLAS_STATUS_NOT_INITIALIZED, Fault::Other);
    check(S::CUBLAS_STATUS_ARCH_MISMATCH, Fault::Other);
    check(S::CUBLAS_STATUS_MAPPING_ERROR, Fault::Other);
    check(S::CUBLAS_STATUS_NOT_SUPPORTED, Fault::Other);
    check(S::CUBLAS_STATUS_LICENSE_ERROR, Fault::Other);
}

/// A missing cuBLAS names what runs instead, for the architecture whose
/// upload needed it; a device error is left as it is.
#[test]
fn a_missing_cublas_names_the_model_it_was_for() {
    let missing = || DeviceError {
        fault: Fault::Other,
        message: format!("{CUBLAS_NOT_FOUND}: no libcublas.so found"),
    };
    for fallback in [
        "the MLP runs on the CPU",
        "the transformer runs on its CPU twin",
    ] {
        let err = with_fallback(missing(), fallback);
        assert_eq!(
            err.message,
            format!("{CUBLAS_NOT_FOUND}: no libcublas.so found; {fallback}")
        );
    }
    let sticky = DeviceError {
        fault: Fault::Sticky,
        message: "CUDA_ERROR_ILLEGAL_ADDRESS".into(),
    };
    assert_eq!(
        with_fallback(sticky, "the MLP runs on the CPU").message,
        "CUDA_ERROR_ILLEGAL_ADDRESS"
    );
}
