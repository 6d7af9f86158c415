//! Compiling the CUDA sources for a device, caching the result, loading it.
//!
//! Every kernel source is CUDA C in `kernels/cuda/`, embedded with
//! `include_str!`. At worker start, [`Gpu::open`] asks the driver its CUDA
//! version and [`crate::nvrtc`] for the NVRTC library (12.x first), and
//! [`choose_target`] decides what the driver will load: CUBIN for the
//! device's exact architecture (PTX from an NVRTC newer than the driver
//! would fail to load; a CUBIN from any 12.x runs on every CUDA 12 driver),
//! PTX only for a device NVRTC does not know. Each source is compiled so,
//! cached on disk per target, options, NVRTC and source hash, and loaded.
//! A source that fails to compile or load disables the GPU path of its
//! kinds, with a log line; the kinds still run on the CPU.
//!
//! The compile check (`scripts/cuda-check`, run by CI with the NVRTC and
//! `ptxas` wheels from PyPI) uses [`compile`] with [`Target::Ptx`] for each
//! architecture we ship for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, DevicePtr, PinnedHostSlice,
};
use cudarc::nvrtc::Ptx;

use crate::driver::{DeviceError, Fault};
use crate::nvrtc::Output;

/// One CUDA source file: its module name, its code, the kernels in it.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub module: &'static str,
    pub code: &'static str,
    pub kernels: &'static [&'static str],
}

/// Headers the sources may `#include "..."`; NVRTC has no file system, so
/// they are pasted in.
const HEADERS: &[(&str, &str)] = &[("philox.cuh", include_str!("../cuda/philox.cuh"))];

/// The source with its `#include "header"` lines replaced by the headers.
pub fn expand(code: &str) -> String {
    let mut out = String::with_capacity(code.len() + 4096);
    for line in code.lines() {
        let trimmed = line.trim();
        let header = trimmed
            .strip_prefix("#include \"")
            .and_then(|rest| rest.strip_suffix('"'))
            .and_then(|name| HEADERS.iter().find(|(n, _)| *n == name));
        match header {
            Some((name, text)) => {
                out.push_str(&format!("// ---- {name} ----\n"));
                out.push_str(text);
                out.push_str(&format!("\n// ---- end of {name} ----\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// What to compile to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Machine code for exactly this compute capability.
    Cubin(u32, u32),
    /// PTX for this virtual architecture: the driver compiles it for the
    /// device when it loads (for a device newer than NVRTC knows, and for
    /// `ptxas` checks).
    Ptx(u32, u32),
}

impl Target {
    fn option(self) -> String {
        match self {
            Target::Cubin(major, minor) => format!("--gpu-architecture=sm_{major}{minor}"),
            Target::Ptx(major, minor) => format!("--gpu-architecture=compute_{major}{minor}"),
        }
    }

    fn output(self) -> Output {
        match self {
            Target::Cubin(..) => Output::Cubin,
            Target::Ptx(..) => Output::Ptx,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Cubin(major, minor) => write!(f, "CUBIN for sm_{major}{minor}"),
            Target::Ptx(major, minor) => write!(f, "PTX for compute_{major}{minor}"),
        }
    }
}

/// A CUDA version: the driver's (`cuDriverGetVersion`) or NVRTC's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CudaVersion {
    pub major: u32,
    pub minor: u32,
}

impl CudaVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        CudaVersion { major, minor }
    }

    /// From `cuDriverGetVersion`'s `1000 * major + 10 * minor` (12080 is
    /// 12.8).
    pub fn from_driver(version: i32) -> Self {
        let version = u32::try_from(version).unwrap_or(0);
        CudaVersion::new(version / 1000, version % 1000 / 10)
    }
}

impl std::fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What NVRTC should compile for, so that the driver loads it on the
/// device, or why nothing it produces would load.
///
/// - A CUBIN from NVRTC `N.x` runs on any driver of CUDA `N.0` or later
///   (CUDA's minor-version compatibility): so CUBIN for the device's exact
///   architecture whenever NVRTC's major version is not above the driver's
///   and NVRTC knows the architecture.
/// - A device NVRTC does not know (newer than it): PTX for the newest
///   architecture NVRTC knows below the device's, which the driver
///   compiles forward; that needs a driver at least as new as NVRTC, major
///   and minor, since PTX carries its ISA version.
/// - NVRTC newer than the driver (NVRTC 13 on an r570 driver): neither its
///   CUBIN nor its PTX loads; the error says to put NVRTC 12 first.
///
/// `nvrtc_archs` lists the real architectures NVRTC compiles for (`90` for
/// sm_90); empty means unknown, and the device's is assumed.
pub fn choose_target(
    driver: CudaVersion,
    nvrtc: CudaVersion,
    nvrtc_archs: &[u32],
    device: (u32, u32),
) -> Result<Target, String> {
    let arch = device.0 * 10 + device.1;
    if nvrtc.major > driver.major {
        return Err(format!(
            "NVRTC {nvrtc} is newer than the driver (CUDA {driver}): the driver loads neither its \
             CUBIN nor its PTX; put an NVRTC {}.x first ({} or LD_LIBRARY_PATH) or update the driver",
            driver.major,
            crate::nvrtc::NVRTC_ENV
        ));
    }
    if nvrtc_archs.is_empty() || nvrtc_archs.contains(&arch) {
        return Ok(Target::Cubin(device.0, device.1));
    }
    let Some(&below) = nvrtc_archs.iter().rev().find(|&&a| a < arch) else {
        return Err(format!(
            "NVRTC {nvrtc} does not compile for sm_{arch} (its oldest is sm_{}); use an older NVRTC",
            nvrtc_archs.first().copied().unwrap_or(0)
        ));
    };
    if nvrtc > driver {
        return Err(format!(
            "NVRTC {nvrtc} does not know sm_{arch}, and its PTX (for compute_{below}) needs a \
             driver of CUDA {nvrtc} or later, not {driver}: update the driver or NVRTC"
        ));
    }
    Ok(Target::Ptx(below / 10, below % 10))
}

/// The modules whose kernels are claimed to do the CPU twin's operations
/// unfused: bit for bit the CPU's results (indicators, patterns, risk's
/// historical losses) or the CPU's path math up to the ulps of `logf`,
/// `sincospif`, `expf` (Monte Carlo). They spell roundings with
/// `__fmul_rn`/`__dadd_rn`; `--fmad=false` makes sure a plain `a * b + c`
/// is not fused into an FMA by NVRTC or `ptxas`, which would round once
/// where the CPU rounds twice. The MLP and the portfolio search are
/// compared with the CPU within a tolerance and keep their FMAs (the
/// search's score is FMA-bound); the self-test is integer only.
pub const BIT_PARITY_MODULES: &[&str] = &["monte_carlo", "risk", "indicators", "patterns"];

/// The NVRTC options for `module` and `target`.
pub fn options(module: &str, target: Target) -> Vec<String> {
    let mut options = vec![
        target.option(),
        "--std=c++17".to_owned(),
        "--device-as-default-execution-space".to_owned(),
    ];
    if BIT_PARITY_MODULES.contains(&module) {
        options.push("--fmad=false".to_owned());
    }
    options
}

/// Whether the NVRTC library can be loaded.
pub fn nvrtc_present() -> bool {
    crate::nvrtc::get().is_ok()
}

/// Compiles one source with NVRTC. Returns the CUBIN or PTX bytes, or the
/// compiler's log.
pub fn compile(source: &Source, target: Target) -> Result<Vec<u8>, String> {
    let nvrtc = crate::nvrtc::get()?;
    let code = expand(source.code);
    nvrtc.compile(
        source.module,
        &code,
        &options(source.module, target),
        target.output(),
    )
}

/// FNV-1a, 64 bits: a cache key that does not change between Rust versions.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The NVRTC version, as `major.minor`, or `none`.
pub fn nvrtc_version() -> String {
    match crate::nvrtc::get() {
        Ok(nvrtc) => format!("{}.{}", nvrtc.version.0, nvrtc.version.1),
        Err(_) => "none".into(),
    }
}

/// Where compiled CUBINs are kept: `$TANDEM_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/tandem/kernels`, else `~/.cache/tandem/kernels`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TANDEM_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("tandem").join("kernels"))
}

/// Compiles for `target`, through the cache in `cache` when given. The key
/// holds the source, the target, the options and NVRTC's version and path.
fn compiled_cached(
    source: &Source,
    target: Target,
    cache: Option<&Path>,
) -> Result<(Vec<u8>, bool), String> {
    let nvrtc = crate::nvrtc::get()?;
    let key = fnv1a(&[
        source.code.as_bytes(),
        expand(source.code).as_bytes(),
        format!("{target:?}").as_bytes(),
        options(source.module, target).join(" ").as_bytes(),
        nvrtc.to_string().as_bytes(),
    ]);
    let path = cache.map(|dir| {
        let name = match target {
            Target::Cubin(a, b) => format!("sm{a}{b}-{key:016x}.cubin"),
            Target::Ptx(a, b) => format!("compute{a}{b}-{key:016x}.ptx"),
        };
        dir.join(format!("{}-{name}", source.module))
    });
    if let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
        return Ok((bytes, true));
    }
    let bytes = compile(source, target)?;
    if let Some(path) = &path {
        // A cache that cannot be written only costs a compile next time.
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &bytes).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
    Ok((bytes, false))
}

/// The CUDA version of the installed driver, from `cuDriverGetVersion`.
#[allow(unsafe_code)]
fn driver_version() -> Result<CudaVersion, DeviceError> {
    let mut version = 0;
    // SAFETY: a valid out pointer; the driver library is loaded (the
    // context exists).
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }.result()?;
    Ok(CudaVersion::from_driver(version))
}

/// What the driver says about a device's size and speed: what occupancy,
/// wave counts and peak figures are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceShape {
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Resident threads an SM can hold.
    pub max_threads_per_sm: u32,
    /// The SM clock's peak, MHz.
    pub clock_mhz: u32,
    /// The memory clock's peak, MHz, and the memory bus width, bits.
    pub memory_clock_mhz: u32,
    pub memory_bus_bits: u32,
}

impl DeviceShape {
    /// Peak memory bandwidth, bytes per second: memory clock x bus width x
    /// 2 (double data rate), the figure NVIDIA's `deviceQuery` prints.
    /// Zero when the driver did not say.
    pub fn peak_bytes_per_second(&self) -> f64 {
        2.0 * f64::from(self.memory_clock_mhz) * 1e6 * f64::from(self.memory_bus_bits) / 8.0
    }
}

/// How many waves `blocks` blocks take on a device where `resident` blocks
/// run at once (SMs x blocks per SM), and how full they are on average: a
/// last wave with few blocks leaves most SMs idle while it runs. `(0, 1.0)`
/// for no blocks; `resident` 0 is taken as 1.
pub fn waves(blocks: u64, resident: u64) -> (u64, f64) {
    if blocks == 0 {
        return (0, 1.0);
    }
    let resident = resident.max(1);
    let waves = blocks.div_ceil(resident);
    (waves, blocks as f64 / (waves * resident) as f64)
}

/// What a [`Gpu`] holds for its life besides its modules.
struct Held {
    /// The cuBLAS handle on [`Gpu::stream`], created by the first model
    /// upload ([`crate::mlp_gpu::cublas`]) and shared by every model on
    /// this GPU until the `Gpu` is dropped: creating and destroying a
    /// handle per task synchronises the whole device.
    blas: Mutex<Option<Arc<CudaBlas>>>,
    /// A page-locked host buffer for device-to-host copies of f64 (the risk
    /// tail's candidates), grown on demand and kept for the `Gpu`'s life:
    /// page-locking costs milliseconds, more than it saves on one copy.
    staging: Mutex<Option<PinnedHostSlice<f64>>>,
    /// Whether [`Gpu::kernel_timer`] records events (off by default: the
    /// worker does not pay for a synchronisation per launch).
    timing: AtomicBool,
    /// Kernel time measured by [`KernelTimer`]s since the last
    /// [`Gpu::take_kernel_time`], nanoseconds.
    kernel_nanos: AtomicU64,
}

/// A GPU ready to run kernels: its context, the one stream every launch
/// and copy goes through, the modules that compiled and loaded, and the
/// cuBLAS handle the MLP kinds share.
pub struct Gpu {
    pub ordinal: u32,
    pub compute_capability: (u32, u32),
    ctx: Arc<CudaContext>,
    /// A stream of our own (non-blocking), not the legacy default stream,
    /// which synchronises with every other blocking stream of the context
    /// (cuBLAS's or a library's). Every launch, copy and cuBLAS call of
    /// this GPU goes through it, so they run in the order issued.
    stream: Arc<CudaStream>,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    /// What the `Gpu` keeps for its whole life besides its modules
    /// (boxed: the handle stays small to move around).
    held: Box<Held>,
    /// Sources whose GPU path is off, and why.
    pub disabled: Vec<(&'static str, String)>,
    /// Sources loaded from the cache rather than compiled.
    pub cached: Vec<&'static str>,
    /// The driver's CUDA version.
    pub driver_version: CudaVersion,
    /// The NVRTC library used (version and path), or why there is none.
    pub nvrtc: Result<String, String>,
    /// What the sources were compiled to; `None` when nothing could be
    /// (the reason is in [`Gpu::disabled`]).
    pub target: Option<Target>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ordinal)
            .field("compute_capability", &self.compute_capability)
            .field("modules", &self.modules.keys().collect::<Vec<_>>())
            .field("disabled", &self.disabled)
            .field("driver_version", &self.driver_version)
            .field("nvrtc", &self.nvrtc)
            .field("target", &self.target)
            .finish()
    }
}

impl Gpu {
    /// Opens GPU `ordinal` and compiles and loads `sources` for it. Fails
    /// only when the device itself cannot be used; a source that does not
    /// compile or load lands in [`Gpu::disabled`].
    pub fn open(
        ordinal: u32,
        sources: &[Source],
        cache: Option<&Path>,
    ) -> Result<Self, DeviceError> {
        if !crate::driver::is_present() {
            return Err(DeviceError {
                fault: Fault::Sticky,
                message: crate::driver::DriverUnavailable::Missing.to_string(),
            });
        }
        let ctx =
            std::panic::catch_unwind(|| CudaContext::new(ordinal as usize)).map_err(|_| {
                DeviceError {
                    fault: Fault::Sticky,
                    message: "the CUDA driver library is unusable (a function is missing)".into(),
                }
            })??;
        let (major, minor) = ctx.compute_capability()?;
        let compute_capability = (
            u32::try_from(major).unwrap_or(0),
            u32::try_from(minor).unwrap_or(0),
        );
        let stream = ctx.new_stream()?;
        let driver_version = driver_version()?;
        let nvrtc = crate::nvrtc::get();
        let target = nvrtc.map_err(str::to_owned).and_then(|lib| {
            let version = CudaVersion::new(lib.version.0, lib.version.1);
            choose_target(driver_version, version, &lib.archs, compute_capability)
                .map_err(|why| format!("{lib}: {why}"))
        });
        let mut gpu = Gpu {
            ordinal,
            compute_capability,
            ctx,
            stream,
            modules: HashMap::new(),
            held: Box::new(Held {
                blas: Mutex::new(None),
                staging: Mutex::new(None),
                timing: AtomicBool::new(false),
                kernel_nanos: AtomicU64::new(0),
            }),
            disabled: Vec::new(),
            cached: Vec::new(),
            driver_version,
            nvrtc: nvrtc.map(|lib| lib.to_string()).map_err(str::to_owned),
            target: target.as_ref().ok().copied(),
        };
        let target = match target {
            Ok(target) => target,
            Err(why) => {
                gpu.disabled = sources.iter().map(|s| (s.module, why.clone())).collect();
                return Ok(gpu);
            }
        };
        for source in sources {
            match compiled_cached(source, target, cache) {
                Ok((bytes, from_cache)) => {
                    let image = match target {
                        Target::Cubin(..) => Ptx::from_binary(bytes),
                        Target::Ptx(..) => Ptx::from_src(String::from_utf8_lossy(&bytes)),
                    };
                    match gpu.ctx.load_module(image) {
                        Ok(module) => {
                            if from_cache {
                                gpu.cached.push(source.module);
                            }
                            gpu.modules.insert(source.module, module);
                        }
                        Err(err) => gpu
                            .disabled
                            .push((source.module, format!("the {target} does not load: {err}"))),
                    }
                }
                Err(why) => gpu.disabled.push((source.module, why)),
            }
        }
        Ok(gpu)
    }

    /// One line for the worker's start log: which NVRTC, which driver,
    /// what the kernels were compiled to.
    pub fn compiler_summary(&self) -> String {
        let nvrtc = match &self.nvrtc {
            Ok(lib) => lib.clone(),
            Err(why) => why.clone(),
        };
        let target = self
            .target
            .map_or_else(|| "nothing compiled".to_owned(), |t| t.to_string());
        format!(
            "{nvrtc}, driver CUDA {}, sm_{}{}: {target}",
            self.driver_version, self.compute_capability.0, self.compute_capability.1
        )
    }

    /// The device memory free now, bytes, as the driver reports it (other
    /// processes' use included).
    pub fn free_memory(&self) -> Result<u64, DeviceError> {
        let (free, _total) = self.ctx.mem_get_info()?;
        Ok(free as u64)
    }

    /// Whether `module` compiled and loaded.
    pub fn has(&self, module: &str) -> bool {
        self.modules.contains_key(module)
    }

    /// A kernel of a loaded module.
    pub fn function(&self, module: &str, kernel: &str) -> Result<CudaFunction, DeviceError> {
        let loaded = self.modules.get(module).ok_or_else(|| DeviceError {
            fault: Fault::Other,
            message: format!("module {module} is not loaded on this GPU"),
        })?;
        Ok(loaded.load_function(kernel)?)
    }

    /// The stream kernels launch on: this GPU's own, the same for every
    /// call.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The device's size and speed, from the driver's attributes.
    pub fn shape(&self) -> Result<DeviceShape, DeviceError> {
        let attribute = |attr| -> Result<u32, DeviceError> {
            Ok(u32::try_from(self.ctx.attribute(attr)?).unwrap_or(0))
        };
        use CUdevice_attribute as A;
        Ok(DeviceShape {
            sm_count: attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            max_threads_per_sm: attribute(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR)?,
            clock_mhz: attribute(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)? / 1000,
            memory_clock_mhz: attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)? / 1000,
            memory_bus_bits: attribute(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?,
        })
    }

    /// Blocks of `threads` threads (and `shared_bytes` of dynamic shared
    /// memory) of `kernel` that one SM holds at once, as the driver
    /// computes it from the kernel's registers and shared memory.
    pub fn blocks_per_sm(
        &self,
        kernel: &CudaFunction,
        threads: u32,
        shared_bytes: usize,
    ) -> Result<u32, DeviceError> {
        Ok(kernel.occupancy_max_active_blocks_per_multiprocessor(threads, shared_bytes, None)?)
    }

    /// Copies `src` from the device into the GPU's page-locked staging
    /// buffer (growing it if needed), waits for the copy, and hands the
    /// values to `read`. Calls take turns on the buffer; the lock is held
    /// for the copy and `read` only.
    pub fn read_back<R>(
        &self,
        src: &impl DevicePtr<f64>,
        read: impl FnOnce(&[f64]) -> R,
    ) -> Result<R, DeviceError> {
        let len = src.len();
        let mut staging = match self.held.staging.lock() {
            Ok(staging) => staging,
            // The buffer is only written by a copy that is waited for before
            // reading: still sound after a panic.
            Err(poisoned) => poisoned.into_inner(),
        };
        let buffer = match staging.take() {
            Some(buffer) if buffer.len() >= len => buffer,
            smaller => {
                // Free the smaller buffer first.
                drop(smaller);
                // SAFETY: the memory is uninitialised; only the part a copy
                // below has written (and that was waited for) is ever read.
                // Flags 0: cached memory (not write-combined, which the
                // host reads slowly).
                #[allow(unsafe_code)]
                unsafe { self.ctx.alloc_pinned_with_flags::<f64>(len.max(1), 0) }?
            }
        };
        let buffer = staging.insert(buffer);
        self.stream.memcpy_dtoh(src, buffer)?;
        self.stream.synchronize()?;
        // Waits on the buffer's own event too (recorded after the copy).
        let values = buffer.as_slice()?;
        Ok(read(&values[..len]))
    }

    /// The GPU's cuBLAS handle, if [`crate::mlp_gpu::cublas`] made one.
    pub(crate) fn blas_slot(&self) -> &Mutex<Option<Arc<CudaBlas>>> {
        &self.held.blas
    }

    /// Turns kernel timing on or off: while off, [`Gpu::kernel_timer`]
    /// gives timers that record nothing and cost nothing. The benchmarks
    /// turn it on; the worker leaves it off. A timer spans whatever the
    /// stream runs between its two events, so the figures mean kernel time
    /// when one caller at a time uses the GPU, as a benchmark does.
    pub fn time_kernels(&self, on: bool) {
        self.held.timing.store(on, Ordering::Relaxed);
    }

    /// Starts timing the work issued to [`Gpu::stream`] from now until
    /// [`KernelTimer::finish`], with CUDA events on that stream: the time
    /// the device spent, not the host's. The launch code wraps only kernel
    /// launches (no copies) in a timer; the total is read with
    /// [`Gpu::take_kernel_time`].
    pub fn kernel_timer(&self) -> Result<KernelTimer<'_>, DeviceError> {
        if !self.held.timing.load(Ordering::Relaxed) {
            return Ok(KernelTimer {
                gpu: self,
                start: None,
            });
        }
        // Timing events (the default flags): CUDA's events are created
        // without timing by cudarc unless asked.
        let start = self
            .stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        Ok(KernelTimer {
            gpu: self,
            start: Some(start),
        })
    }

    /// The kernel time [`KernelTimer`]s measured since the last call, and
    /// zero it. Zero when timing is off or nothing was timed.
    pub fn take_kernel_time(&self) -> Duration {
        Duration::from_nanos(self.held.kernel_nanos.swap(0, Ordering::Relaxed))
    }
}

/// A span of work on a [`Gpu`]'s stream being timed; see
/// [`Gpu::kernel_timer`].
#[derive(Debug)]
#[must_use = "finish the timer to count its time"]
pub struct KernelTimer<'a> {
    gpu: &'a Gpu,
    /// The event recorded on the GPU's stream at the start; `None` when
    /// timing is off.
    start: Option<CudaEvent>,
}

impl KernelTimer<'_> {
    /// Records the end on the same stream, waits for the device to reach
    /// it, and adds the time between the two events to the GPU's total.
    /// Returns that time (zero when timing is off).
    pub fn finish(self) -> Result<Duration, DeviceError> {
        let Some(start) = self.start else {
            return Ok(Duration::ZERO);
        };
        let end = self
            .gpu
            .stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        // Waits for both events, then reads the time between them.
        let ms = start.elapsed_ms(&end)?;
        let elapsed = Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.gpu
            .held
            .kernel_nanos
            .fetch_add(nanos, Ordering::Relaxed);
        Ok(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: Source = Source {
        module: "test",
        code: "#include \"philox.cuh\"\nextern \"C\" __global__ void draw(unsigned int* out) {\n  philox_u4 r = philox4x32_10(philox_counter(threadIdx.x, 0), 0u, 0u);\n  out[threadIdx.x] = r.x;\n}\n",
        kernels: &["draw"],
    };

    #[test]
    fn headers_are_pasted_in() {
        let code = expand(TEST.code);
        assert!(code.contains("philox4x32_10(philox_u4 c"));
        assert!(!code.contains("#include \"philox.cuh\""));
        assert!(code.contains("__global__ void draw"));
    }

    #[test]
    fn cache_keys_depend_on_source_and_target() {
        let a = fnv1a(&[b"x", b"sm_90"]);
        assert_ne!(a, fnv1a(&[b"x", b"sm_89"]));
        assert_ne!(a, fnv1a(&[b"xs", b"m_90"]));
        assert_eq!(a, fnv1a(&[b"x", b"sm_90"]));
    }

    /// NVRTC 12.x's real architectures (12.8 adds sm_100 and sm_120).
    const ARCHS_12_4: &[u32] = &[50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90];
    const ARCHS_12_8: &[u32] = &[
        50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90, 100, 101, 120,
    ];
    const ARCHS_13_0: &[u32] = &[75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121];

    fn check(driver: i32, nvrtc: (u32, u32), archs: &[u32], device: (u32, u32), expect: &str) {
        let got = match choose_target(
            CudaVersion::from_driver(driver),
            CudaVersion::new(nvrtc.0, nvrtc.1),
            archs,
            device,
        ) {
            Ok(target) => target.to_string(),
            Err(why) => format!("error: {why}"),
        };
        assert!(
            got.starts_with(expect),
            "driver {driver}, NVRTC {nvrtc:?}, sm {device:?}: {got}, expected {expect}"
        );
    }

    #[test]
    fn the_target_follows_the_driver_nvrtc_and_device() {
        // An H100/H200 on an r570 driver with the bundle's NVRTC 12.9: CUBIN.
        check(12080, (12, 9), ARCHS_12_8, (9, 0), "CUBIN for sm_90");
        // The same NVRTC on an r525 driver (CUDA 12.0): CUBIN still runs
        // (minor-version compatibility).
        check(12000, (12, 9), ARCHS_12_8, (9, 0), "CUBIN for sm_90");
        // A newer driver runs an older NVRTC's CUBIN.
        check(13000, (12, 4), ARCHS_12_4, (8, 9), "CUBIN for sm_89");
        check(13000, (13, 0), ARCHS_13_0, (9, 0), "CUBIN for sm_90");
        // NVRTC 13 on a CUDA 12 driver: nothing it makes loads.
        check(
            12080,
            (13, 0),
            ARCHS_13_0,
            (9, 0),
            "error: NVRTC 13.0 is newer",
        );
        check(
            12090,
            (13, 1),
            ARCHS_13_0,
            (8, 6),
            "error: NVRTC 13.1 is newer",
        );
        // A device NVRTC does not know: PTX for the newest it knows below,
        // when the driver is as new as NVRTC.
        check(12080, (12, 4), ARCHS_12_4, (12, 0), "PTX for compute_90");
        check(12040, (12, 4), ARCHS_12_4, (10, 0), "PTX for compute_90");
        // ... and an error when the driver is older than NVRTC (its PTX ISA
        // is too new to JIT).
        check(
            12020,
            (12, 4),
            ARCHS_12_4,
            (12, 0),
            "error: NVRTC 12.4 does not know sm_120",
        );
        // A device older than any NVRTC architecture.
        check(
            13000,
            (13, 0),
            ARCHS_13_0,
            (7, 0),
            "error: NVRTC 13.0 does not compile for sm_70",
        );
        // An NVRTC that cannot list its architectures: the device's.
        check(12080, (12, 9), &[], (8, 6), "CUBIN for sm_86");
    }

    #[test]
    fn waves_count_the_last_partial_one() {
        let check = |blocks: u64, resident: u64, expect_waves: u64, expect_used: f64| {
            let (waves, used) = waves(blocks, resident);
            assert_eq!(waves, expect_waves, "{blocks} on {resident}");
            assert!(
                (used - expect_used).abs() < 1e-3,
                "{blocks} on {resident}: {used}"
            );
        };
        // 1M Monte Carlo paths on a 60-SM RTX 4070 Ti: 245 blocks of 1024
        // threads, one per SM, against 7 840 of 128, ten per SM.
        check(245, 60, 5, 245.0 / 300.0);
        check(7_840, 600, 14, 7_840.0 / 8_400.0);
        check(480, 480, 1, 1.0);
        check(481, 480, 2, 481.0 / 960.0);
        check(0, 480, 0, 1.0);
        check(3, 0, 3, 1.0);
    }

    #[test]
    fn peak_bandwidth_is_clock_times_bus_times_two() {
        // An H100 SXM's HBM3: 2 619 MHz, 5 120 bits: 3.35 TB/s.
        let shape = DeviceShape {
            sm_count: 132,
            max_threads_per_sm: 2048,
            clock_mhz: 1980,
            memory_clock_mhz: 2619,
            memory_bus_bits: 5120,
        };
        assert!((shape.peak_bytes_per_second() / 1e12 - 3.352).abs() < 1e-3);
        let unknown = DeviceShape {
            memory_clock_mhz: 0,
            ..shape
        };
        assert_eq!(unknown.peak_bytes_per_second(), 0.0);
    }

    #[test]
    fn driver_versions_read_as_major_minor() {
        assert_eq!(CudaVersion::from_driver(12080), CudaVersion::new(12, 8));
        assert_eq!(CudaVersion::from_driver(13000), CudaVersion::new(13, 0));
        assert_eq!(CudaVersion::from_driver(11040), CudaVersion::new(11, 4));
        assert_eq!(CudaVersion::from_driver(-1), CudaVersion::new(0, 0));
        assert!(CudaVersion::new(12, 10) > CudaVersion::new(12, 9));
    }

    /// Issue 19: every kernel claimed to equal the CPU bit for bit is
    /// compiled without FMA contraction, whatever the target.
    #[test]
    fn bit_parity_modules_compile_without_fma_contraction() {
        for target in [Target::Cubin(9, 0), Target::Ptx(8, 6)] {
            for module in ["monte_carlo", "risk", "indicators", "patterns"] {
                let options = options(module, target);
                assert!(
                    options.iter().any(|o| o == "--fmad=false"),
                    "{module}: {options:?}"
                );
                assert!(options.contains(&target.option()), "{options:?}");
            }
            // The MLP, the transformer and the portfolio search are
            // compared within a tolerance and keep their FMAs.
            for module in ["mlp", "transformer", "portfolio_opt"] {
                let options = options(module, target);
                assert!(
                    !options.iter().any(|o| o.starts_with("--fmad")),
                    "{options:?}"
                );
            }
        }
        for source in crate::SOURCES {
            if BIT_PARITY_MODULES.contains(&source.module) {
                continue;
            }
            assert!(
                ["mlp", "transformer", "portfolio_opt", "selftest"].contains(&source.module),
                "{}: is it claimed to equal the CPU bit for bit? Add it to BIT_PARITY_MODULES or here",
                source.module
            );
        }
    }

    #[test]
    fn compiles_where_nvrtc_is_installed() {
        // CI puts the NVRTC wheel on LD_LIBRARY_PATH (scripts/cuda-check);
        // elsewhere this says so and passes.
        if !nvrtc_present() {
            assert!(
                compile(&TEST, Target::Ptx(9, 0))
                    .unwrap_err()
                    .contains("NVRTC")
            );
            return;
        }
        let ptx = compile(&TEST, Target::Ptx(8, 6)).expect("PTX");
        assert!(String::from_utf8_lossy(&ptx).contains(".entry draw"));
        let cubin = compile(&TEST, Target::Cubin(9, 0)).expect("CUBIN");
        assert_eq!(&cubin[..4], b"\x7fELF");
        let broken = Source {
            code: "extern \"C\" __global__ void k() { undefined_thing(); }",
            ..TEST
        };
        let err = compile(&broken, Target::Ptx(9, 0)).unwrap_err();
        assert!(err.contains("undefined_thing"), "{err}");
    }
}

#[cfg(all(test, feature = "gpu-tests"))]
mod gpu_tests {
    use super::*;

    /// A module that does not compile is disabled with its reason; the
    /// others load, and a second open finds them in the cache.
    #[test]
    fn a_broken_module_is_disabled_and_the_rest_load_and_cache() {
        let dir = std::env::temp_dir().join(format!("tandem-cubin-{}", std::process::id()));
        let broken = Source {
            module: "broken",
            code: "extern \"C\" __global__ void k() { undefined_thing(); }",
            kernels: &["k"],
        };
        let mut sources = crate::SOURCES.to_vec();
        sources.push(broken);
        let gpu = Gpu::open(0, &sources, Some(&dir)).expect("GPU 0");
        assert!(!gpu.has("broken"));
        assert_eq!(gpu.disabled.len(), 1, "{:?}", gpu.disabled);
        assert!(
            gpu.disabled[0].1.contains("undefined_thing"),
            "{:?}",
            gpu.disabled
        );
        for source in crate::SOURCES {
            assert!(gpu.has(source.module), "{} did not load", source.module);
            for kernel in source.kernels {
                gpu.function(source.module, kernel).expect("kernel");
            }
        }
        let again = Gpu::open(0, crate::SOURCES, Some(&dir)).expect("GPU 0");
        assert_eq!(
            again.cached.len(),
            crate::SOURCES.len(),
            "{:?}",
            again.cached
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
