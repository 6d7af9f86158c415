//! Compiling the CUDA sources for a device, caching the result, loading it.
//!
//! Every kernel source is CUDA C in `kernels/cuda/`, embedded with
//! `include_str!`. At worker start, [`Gpu::open`] compiles each with NVRTC
//! for the device's exact architecture straight to CUBIN (PTX from an NVRTC
//! newer than the driver would fail to load), caches the CUBIN on disk per
//! architecture and source hash, and loads it. A source that fails to
//! compile or load disables the GPU path of its kinds, with a log line; the
//! kinds still run on the CPU.
//!
//! The compile check (`scripts/cuda-check`, run by CI with the NVRTC and
//! `ptxas` wheels from PyPI) uses [`compile`] with [`Target::Ptx`] for each
//! architecture we ship for.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;
use cudarc::nvrtc::result as nvrtc;
use cudarc::nvrtc::sys as nvrtc_sys;

use crate::driver::{DeviceError, Fault};

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
    /// PTX for this virtual architecture (for `ptxas` checks).
    Ptx(u32, u32),
}

impl Target {
    fn option(self) -> String {
        match self {
            Target::Cubin(major, minor) => format!("--gpu-architecture=sm_{major}{minor}"),
            Target::Ptx(major, minor) => format!("--gpu-architecture=compute_{major}{minor}"),
        }
    }
}

/// Whether the NVRTC library can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library by its usual names.
    #[allow(unsafe_code)]
    unsafe {
        nvrtc_sys::is_culib_present()
    }
}

/// Compiles one source with NVRTC. Returns the CUBIN or PTX bytes, or the
/// compiler's log.
pub fn compile(source: &Source, target: Target) -> Result<Vec<u8>, String> {
    if !nvrtc_present() {
        return Err("NVRTC (libnvrtc) is not installed".into());
    }
    let code = expand(source.code);
    std::panic::catch_unwind(|| compile_expanded(source.module, &code, target))
        .unwrap_or_else(|_| Err("the NVRTC library is unusable (a function is missing)".into()))
}

#[allow(unsafe_code)]
fn compile_expanded(module: &str, code: &str, target: Target) -> Result<Vec<u8>, String> {
    let src = CString::new(code).map_err(|_| format!("{module}: the source holds a NUL byte"))?;
    let name = CString::new(format!("{module}.cu")).map_err(|e| e.to_string())?;
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(|e| e.to_string())?;
    let options = [
        target.option(),
        "--std=c++17".to_owned(),
        "--device-as-default-execution-space".to_owned(),
    ];
    // SAFETY: `prog` comes from create_program above and is destroyed once,
    // at the end of this function; `src` and `name` outlive it.
    let compiled = unsafe { nvrtc::compile_program(prog, &options) };
    let result = match compiled {
        Ok(()) => match target {
            Target::Ptx(..) => unsafe { nvrtc::get_ptx(prog) }
                .map(|chars| {
                    chars
                        .into_iter()
                        .map(|c| c as u8)
                        .take_while(|&b| b != 0)
                        .collect()
                })
                .map_err(|e| e.to_string()),
            Target::Cubin(..) => unsafe { cubin(prog) },
        },
        Err(err) => {
            let log = unsafe { nvrtc::get_program_log(prog) }
                .map(|chars| {
                    let bytes: Vec<u8> = chars
                        .into_iter()
                        .map(|c| c as u8)
                        .take_while(|&b| b != 0)
                        .collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .unwrap_or_default();
            Err(format!("{module}: {err}\n{log}"))
        }
    };
    // SAFETY: as above; not used after this.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    result
}

/// The CUBIN of a compiled program.
///
/// # Safety
/// `prog` must be a compiled program not yet destroyed.
#[allow(unsafe_code)]
unsafe fn cubin(prog: nvrtc_sys::nvrtcProgram) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: the caller's promise; `size` is a valid out pointer.
    unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| e.to_string())?;
    let mut bytes = vec![0u8; size];
    // SAFETY: `bytes` holds the `size` bytes NVRTC said it would write.
    unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| e.to_string())?;
    Ok(bytes)
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

/// The NVRTC version, as `major.minor`, or `unknown`.
pub fn nvrtc_version() -> String {
    if !nvrtc_present() {
        return "none".into();
    }
    let mut major = 0;
    let mut minor = 0;
    // SAFETY: two valid out pointers.
    #[allow(unsafe_code)]
    let status = std::panic::catch_unwind(move || {
        let status = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
        (status, major, minor)
    });
    match status {
        Ok((nvrtc_sys::nvrtcResult::NVRTC_SUCCESS, major, minor)) => format!("{major}.{minor}"),
        _ => "unknown".into(),
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

/// Compiles for `target`, through the cache in `cache` when given.
fn cubin_cached(
    source: &Source,
    target: Target,
    cache: Option<&Path>,
) -> Result<(Vec<u8>, bool), String> {
    let key = fnv1a(&[
        source.code.as_bytes(),
        expand(source.code).as_bytes(),
        format!("{target:?}").as_bytes(),
        nvrtc_version().as_bytes(),
    ]);
    let path = cache.map(|dir| {
        let arch = match target {
            Target::Cubin(a, b) | Target::Ptx(a, b) => format!("{a}{b}"),
        };
        dir.join(format!("{}-sm{arch}-{key:016x}.cubin", source.module))
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

/// A GPU ready to run kernels: its context, a stream, and the modules that
/// compiled and loaded.
pub struct Gpu {
    pub ordinal: u32,
    pub compute_capability: (u32, u32),
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    /// Sources whose GPU path is off, and why.
    pub disabled: Vec<(&'static str, String)>,
    /// Sources loaded from the cache rather than compiled.
    pub cached: Vec<&'static str>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ordinal)
            .field("compute_capability", &self.compute_capability)
            .field("modules", &self.modules.keys().collect::<Vec<_>>())
            .field("disabled", &self.disabled)
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
        let stream = ctx.default_stream();
        let mut gpu = Gpu {
            ordinal,
            compute_capability,
            ctx,
            stream,
            modules: HashMap::new(),
            disabled: Vec::new(),
            cached: Vec::new(),
        };
        let target = Target::Cubin(compute_capability.0, compute_capability.1);
        for source in sources {
            match cubin_cached(source, target, cache) {
                Ok((bytes, from_cache)) => match gpu.ctx.load_module(Ptx::from_binary(bytes)) {
                    Ok(module) => {
                        if from_cache {
                            gpu.cached.push(source.module);
                        }
                        gpu.modules.insert(source.module, module);
                    }
                    Err(err) => gpu
                        .disabled
                        .push((source.module, format!("the CUBIN does not load: {err}"))),
                },
                Err(why) => gpu.disabled.push((source.module, why)),
            }
        }
        Ok(gpu)
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

    /// The stream kernels launch on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
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
