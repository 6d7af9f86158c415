//! The CUDA driver, loaded at run time: whether it is there, which GPUs it
//! sees, a health probe, and what a driver error means for the device.
//!
//! The `unsafe` code here is cudarc's raw device queries
//! (`cuDeviceGetAttribute`, `cuDeviceTotalMem`): `unsafe fn`s whose only
//! contract is a device handle from `cuDeviceGet`, which is what
//! every call here passes. Listing devices this way creates no CUDA context,
//! so detection costs no GPU memory.
//!
//! The driver applies `CUDA_VISIBLE_DEVICES` itself: ordinals here are
//! those after it.

use cudarc::driver::CudaContext;
use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys::{self, CUdevice_attribute};

/// One GPU as the CUDA driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDevice {
    /// The CUDA ordinal (after `CUDA_VISIBLE_DEVICES`).
    pub ordinal: u32,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as NVML writes it.
    pub uuid: String,
    pub name: String,
    /// (domain, bus, device) of its PCI address.
    pub pci: (u32, u32, u32),
    pub memory_total: u64,
    pub compute_capability: (u32, u32),
    pub sm_count: u32,
    pub clock_mhz: u32,
}

impl CudaDevice {
    /// `0000:01:00.0`.
    pub fn pci_bus_id(&self) -> String {
        format!("{:04x}:{:02x}:{:02x}.0", self.pci.0, self.pci.1, self.pci.2)
    }
}

/// Why the driver cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverUnavailable {
    #[error("no CUDA driver library (libcuda) on this machine")]
    Missing,
    #[error("the CUDA driver failed: {0}")]
    Failed(String),
}

/// What a driver error means for the device that raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The device failed: its context is poisoned (illegal address, launch
    /// failure, ...) or the GPU is gone (fallen off the bus, uncorrectable
    /// ECC or NVLink error, contained by the GPU). Every later call in this
    /// process fails too; only a new process (and a passing probe) recovers.
    Sticky,
    /// Out of device memory: not fatal; the task needs a device with more
    /// room.
    OutOfMemory,
    /// Anything else: the call failed, the device is fine.
    Other,
}

/// Classifies a driver error. Sticky are the errors the CUDA Driver API
/// documents as leaving the context unusable ("the process must be
/// terminated and relaunched"), and those that mean the device is gone:
/// `CUDA_ERROR_UNKNOWN` is what calls return once a GPU fell off the bus
/// (Xid 79), `CUDA_ERROR_DEVICE_UNAVAILABLE` that the device can no longer
/// be used by this process. `CUDA_ERROR_NOT_PERMITTED` and the errors about
/// arguments, handles and modules stay [`Fault::Other`]: they describe the
/// call, not the device.
pub fn classify(err: &DriverError) -> Fault {
    use sys::cudaError_enum as E;
    match err.0 {
        E::CUDA_ERROR_OUT_OF_MEMORY => Fault::OutOfMemory,
        // The context is poisoned.
        E::CUDA_ERROR_ILLEGAL_ADDRESS
        | E::CUDA_ERROR_LAUNCH_FAILED
        | E::CUDA_ERROR_LAUNCH_TIMEOUT
        | E::CUDA_ERROR_HARDWARE_STACK_ERROR
        | E::CUDA_ERROR_ILLEGAL_INSTRUCTION
        | E::CUDA_ERROR_MISALIGNED_ADDRESS
        | E::CUDA_ERROR_INVALID_ADDRESS_SPACE
        | E::CUDA_ERROR_INVALID_PC
        | E::CUDA_ERROR_ASSERT
        | E::CUDA_ERROR_TENSOR_MEMORY_LEAK
        | E::CUDA_ERROR_EXTERNAL_DEVICE
        | E::CUDA_ERROR_CONTEXT_IS_DESTROYED => Fault::Sticky,
        // The hardware failed or is gone.
        E::CUDA_ERROR_ECC_UNCORRECTABLE
        | E::CUDA_ERROR_NVLINK_UNCORRECTABLE
        | E::CUDA_ERROR_CONTAINED
        | E::CUDA_ERROR_DEVICE_UNAVAILABLE
        | E::CUDA_ERROR_UNKNOWN => Fault::Sticky,
        _ => Fault::Other,
    }
}

fn failed(err: DriverError) -> DriverUnavailable {
    DriverUnavailable::Failed(err.to_string())
}

/// Whether the driver library can be loaded. cudarc panics on the first
/// driver call when it cannot, so everything here asks this first.
pub fn is_present() -> bool {
    // SAFETY: only tries to open the library by its usual names; nothing
    // from it is called.
    #[allow(unsafe_code)]
    unsafe {
        sys::is_culib_present()
    }
}

/// The GPUs the driver sees, in CUDA order.
pub fn devices() -> Result<Vec<CudaDevice>, DriverUnavailable> {
    if !is_present() {
        return Err(DriverUnavailable::Missing);
    }
    // cudarc's loader panics when the library lacks a function (a driver
    // older than the bindings): an error here, never a crash.
    std::panic::catch_unwind(list_devices).unwrap_or_else(|panic| {
        Err(DriverUnavailable::Failed(format!(
            "the driver library is unusable: {}",
            panic_text(&panic)
        )))
    })
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn list_devices() -> Result<Vec<CudaDevice>, DriverUnavailable> {
    result::init().map_err(failed)?;
    let count = result::device::get_count().map_err(failed)?;
    let mut out = Vec::new();
    for ordinal in 0..count {
        let dev = result::device::get(ordinal).map_err(failed)?;
        let attribute = |attr: CUdevice_attribute| -> Result<u32, DriverUnavailable> {
            // SAFETY: `dev` is a handle cuDeviceGet returned.
            #[allow(unsafe_code)]
            let value = unsafe { result::device::get_attribute(dev, attr) }.map_err(failed)?;
            Ok(u32::try_from(value).unwrap_or(0))
        };
        // SAFETY: as above.
        #[allow(unsafe_code)]
        let memory_total = unsafe { result::device::total_mem(dev) }.map_err(failed)?;
        out.push(CudaDevice {
            ordinal: u32::try_from(ordinal).unwrap_or(0),
            uuid: format_uuid(&result::device::get_uuid(dev).map_err(failed)?.bytes),
            name: result::device::get_name(dev).map_err(failed)?,
            pci: (
                attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
                attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
                attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?,
            ),
            memory_total: u64::try_from(memory_total).unwrap_or(u64::MAX),
            compute_capability: (
                attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            sm_count: attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            clock_mhz: attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)? / 1000,
        });
    }
    Ok(out)
}

/// `GPU-` and the 16 bytes as 8-4-4-4-12 hex digits, NVML's form.
pub fn format_uuid(bytes: &[std::ffi::c_char; 16]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{:02x}", *b as u8)).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

/// A device error with what it means.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeviceError {
    pub fault: Fault,
    pub message: String,
}

impl From<DriverError> for DeviceError {
    fn from(err: DriverError) -> Self {
        DeviceError {
            fault: classify(&err),
            message: err.to_string(),
        }
    }
}

/// Checks a GPU works: creates its context, writes a pattern to device
/// memory, reads it back and compares. Returns the free and total memory.
pub fn probe(ordinal: u32) -> Result<(u64, u64), DeviceError> {
    if !is_present() {
        return Err(DeviceError {
            fault: Fault::Sticky,
            message: DriverUnavailable::Missing.to_string(),
        });
    }
    std::panic::catch_unwind(|| write_and_read_back(ordinal)).unwrap_or_else(|panic| {
        Err(DeviceError {
            fault: Fault::Sticky,
            message: format!("the driver library is unusable: {}", panic_text(&panic)),
        })
    })
}

fn write_and_read_back(ordinal: u32) -> Result<(u64, u64), DeviceError> {
    let ctx = CudaContext::new(ordinal as usize)?;
    let stream = ctx.default_stream();
    let pattern: Vec<u32> = (0..1u32 << 18)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let device = stream.clone_htod(&pattern)?;
    let back: Vec<u32> = stream.clone_dtoh(&device)?;
    stream.synchronize()?;
    if back != pattern {
        return Err(DeviceError {
            fault: Fault::Sticky,
            message: "device memory read back differs from what was written".into(),
        });
    }
    let (free, total) = ctx.mem_get_info()?;
    Ok((free as u64, total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_read_as_nvml_writes_them() {
        let mut bytes = [0 as std::ffi::c_char; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8 * 17) as std::ffi::c_char;
        }
        assert_eq!(
            format_uuid(&bytes),
            "GPU-00112233-4455-6677-8899-aabbccddeeff"
        );
    }

    #[test]
    fn driver_errors_are_classified_by_what_they_mean_for_the_device() {
        use sys::cudaError_enum as E;
        let check = |code: E, expect: Fault| {
            assert_eq!(classify(&DriverError(code)), expect, "{code:?}");
        };
        // The context is poisoned.
        check(E::CUDA_ERROR_ILLEGAL_ADDRESS, Fault::Sticky);
        check(E::CUDA_ERROR_LAUNCH_FAILED, Fault::Sticky);
        check(E::CUDA_ERROR_LAUNCH_TIMEOUT, Fault::Sticky);
        check(E::CUDA_ERROR_HARDWARE_STACK_ERROR, Fault::Sticky);
        check(E::CUDA_ERROR_ILLEGAL_INSTRUCTION, Fault::Sticky);
        check(E::CUDA_ERROR_MISALIGNED_ADDRESS, Fault::Sticky);
        check(E::CUDA_ERROR_INVALID_ADDRESS_SPACE, Fault::Sticky);
        check(E::CUDA_ERROR_INVALID_PC, Fault::Sticky);
        check(E::CUDA_ERROR_ASSERT, Fault::Sticky);
        check(E::CUDA_ERROR_TENSOR_MEMORY_LEAK, Fault::Sticky);
        check(E::CUDA_ERROR_EXTERNAL_DEVICE, Fault::Sticky);
        check(E::CUDA_ERROR_CONTEXT_IS_DESTROYED, Fault::Sticky);
        // The hardware failed or is gone (issue 19: a dead GPU is dead).
        check(E::CUDA_ERROR_UNKNOWN, Fault::Sticky);
        check(E::CUDA_ERROR_DEVICE_UNAVAILABLE, Fault::Sticky);
        check(E::CUDA_ERROR_ECC_UNCORRECTABLE, Fault::Sticky);
        check(E::CUDA_ERROR_NVLINK_UNCORRECTABLE, Fault::Sticky);
        check(E::CUDA_ERROR_CONTAINED, Fault::Sticky);
        // Out of memory: the task needs more room, the device is fine.
        check(E::CUDA_ERROR_OUT_OF_MEMORY, Fault::OutOfMemory);
        // About the call, not the device.
        check(E::CUDA_ERROR_INVALID_VALUE, Fault::Other);
        check(E::CUDA_ERROR_NOT_PERMITTED, Fault::Other);
        check(E::CUDA_ERROR_NOT_SUPPORTED, Fault::Other);
        check(E::CUDA_ERROR_INVALID_HANDLE, Fault::Other);
        check(E::CUDA_ERROR_NOT_FOUND, Fault::Other);
        check(E::CUDA_ERROR_NOT_READY, Fault::Other);
        check(E::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, Fault::Other);
        check(E::CUDA_ERROR_INVALID_PTX, Fault::Other);
        check(E::CUDA_ERROR_NO_BINARY_FOR_GPU, Fault::Other);
    }

    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        // On a machine without libcuda (CI), listing devices says so; on a
        // GPU machine it lists them.
        match devices() {
            Err(DriverUnavailable::Missing) => assert!(!is_present()),
            Err(other) => panic!("driver present but failing: {other}"),
            Ok(devices) => {
                assert!(is_present() && devices.iter().all(|d| d.uuid.starts_with("GPU-")))
            }
        }
    }

    /// Needs a GPU: `cargo test -p tandem-kernels --features gpu-tests`.
    #[cfg(feature = "gpu-tests")]
    #[test]
    fn probe_passes_on_every_gpu() {
        let devices = devices().expect("a CUDA driver");
        assert!(!devices.is_empty(), "no GPU visible");
        for device in devices {
            let (free, total) = probe(device.ordinal).expect("probe");
            assert!(free > 0 && free <= total, "{free} of {total}");
            assert_eq!(total, device.memory_total);
            assert!(device.sm_count > 0 && device.clock_mhz > 0);
        }
    }
}
