//! The toolchain's self-test kernel: Philox words on the GPU, to compare
//! with [`crate::philox`] (the GPU tests do).

use crate::driver::DeviceError;
use crate::runtime::{Gpu, Source};

pub const SOURCE: Source = Source {
    module: "selftest",
    code: include_str!("../cuda/selftest.cu"),
    kernels: &["philox_words"],
};

/// The Philox words of streams `0..n` under `seed`, block 0, on the GPU.
pub fn philox_words_gpu(gpu: &Gpu, seed: u64, n: u32) -> Result<Vec<u32>, DeviceError> {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let stream = gpu.stream();
    let function = gpu.function(SOURCE.module, "philox_words")?;
    let mut out = stream.alloc_zeros::<u32>(4 * n as usize)?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&seed).arg(&n).arg(&mut out);
    // SAFETY: the arguments match `philox_words(u64, u32, u32*)`, and `out`
    // holds 4 n words.
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(LaunchConfig::for_num_elems(n))?;
    }
    Ok(stream.clone_dtoh(&out)?)
}

/// The same words on the CPU.
pub fn philox_words_cpu(seed: u64, n: u32) -> Vec<u32> {
    (0..u64::from(n))
        .flat_map(|i| {
            crate::philox::philox4x32_10(crate::philox::counter(i, 0), crate::philox::key(seed))
        })
        .collect()
}

#[cfg(all(test, feature = "gpu-tests"))]
mod tests {
    use super::*;

    #[test]
    fn gpu_philox_matches_the_cpu_bit_for_bit() {
        let gpu = Gpu::open(0, crate::SOURCES, None).expect("GPU 0");
        assert!(gpu.disabled.is_empty(), "{:?}", gpu.disabled);
        let n = 100_000;
        assert_eq!(
            philox_words_gpu(&gpu, 0x1234_5678_9abc, n).unwrap(),
            philox_words_cpu(0x1234_5678_9abc, n)
        );
    }
}
