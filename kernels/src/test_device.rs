//! What the kernels' tests share: a test written once runs on every
//! device, as candle's `test_device!` does. A check takes a [`Device`] and
//! runs the kernel family there through a small dispatch of its module's
//! tests; [`test_device!`] makes it one test on the CPU twin and, under the
//! `gpu-tests` feature (`scripts/gpu-check`), one on GPU 0, named after
//! the check with `_cpu` and `_gpu`.

/// Where a test runs a kernel family: the CPU twin, or a GPU.
pub(crate) enum Device {
    Cpu,
    #[cfg(feature = "gpu-tests")]
    Gpu(crate::runtime::Gpu),
}

impl Device {
    /// GPU 0 with every module of the crate compiled and loaded: a test
    /// on a GPU host fails rather than run a kind's CPU fallback.
    #[cfg(feature = "gpu-tests")]
    pub(crate) fn gpu() -> Self {
        let gpu = crate::runtime::Gpu::open(0, crate::SOURCES, None).expect("GPU 0");
        assert!(gpu.disabled.is_empty(), "{:?}", gpu.disabled);
        Device::Gpu(gpu)
    }
}

/// `test_device!(check, check_cpu, check_gpu)`: the test `check_cpu` runs
/// `check(&Device::Cpu)`; under `gpu-tests`, `check_gpu` runs
/// `check(&Device::gpu())`.
macro_rules! test_device {
    ($check:ident, $cpu:ident, $gpu:ident) => {
        #[test]
        fn $cpu() {
            $check(&$crate::test_device::Device::Cpu);
        }

        #[cfg(feature = "gpu-tests")]
        #[test]
        fn $gpu() {
            $check(&$crate::test_device::Device::gpu());
        }
    };
}

pub(crate) use test_device;
