//! The NVRTC library: which one, loaded by path, and its raw calls.
//!
//! cudarc's own loader tries `libnvrtc.so` before `libnvrtc.so.12`, so on a
//! host whose CUDA 13 toolkit owns `libnvrtc.so` it would take NVRTC 13,
//! whose CUBINs need an r580 driver. This module chooses instead, first
//! that loads of [`candidates`]: `$TANDEM_NVRTC` when set (that path only),
//! the bundle's `libnvrtc.so.12` beside the executable (`../lib/` or the
//! same folder: `scripts/gpu-check`'s layout), `libnvrtc.so.12` by the
//! loader's search (`LD_LIBRARY_PATH`, the loader cache), then the
//! unversioned `libnvrtc.so` and `libnvrtc.so.13`. It opens the library
//! with `libloading` itself (by path, never closed), once per process, and calls it through the
//! function pointers it resolves; [`crate::runtime`] decides from its
//! version what to compile for.
//!
//! Result codes are read as plain integers, never as cudarc's enum: a
//! library of another version may return a code that enum lacks.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The environment variable that names the NVRTC library to use (a path).
pub const NVRTC_ENV: &str = "TANDEM_NVRTC";

/// The libraries to try, in order. `override_path` is `$TANDEM_NVRTC`;
/// `exe_dir` the running executable's folder.
pub fn candidates(override_path: Option<&Path>, exe_dir: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = override_path {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Some(dir) = exe_dir {
        out.push(dir.join("../lib/libnvrtc.so.12"));
        out.push(dir.join("libnvrtc.so.12"));
    }
    // Bare names: the dynamic loader searches LD_LIBRARY_PATH, its cache
    // and the default folders.
    for name in ["libnvrtc.so.12", "libnvrtc.so", "libnvrtc.so.13"] {
        out.push(PathBuf::from(name));
    }
    out
}

type Program = *mut c_void;

type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;
type CreateProgramFn = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileProgramFn = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
type DestroyProgramFn = unsafe extern "C" fn(*mut Program) -> c_int;
type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> c_int;
type ReadFn = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
type ArchsFn = unsafe extern "C" fn(*mut c_int) -> c_int;

/// The NVRTC functions Tandem calls, resolved from one library.
struct Functions {
    version: VersionFn,
    error_string: ErrorStringFn,
    create_program: CreateProgramFn,
    compile_program: CompileProgramFn,
    destroy_program: DestroyProgramFn,
    program_log_size: SizeFn,
    program_log: ReadFn,
    ptx_size: SizeFn,
    ptx: ReadFn,
    cubin_size: SizeFn,
    cubin: ReadFn,
    /// Absent before NVRTC 11.2: then every architecture is tried.
    num_supported_archs: Option<ArchsFn>,
    supported_archs: Option<ArchsFn>,
}

/// The NVRTC library in use: where it was found, its version, the
/// architectures it compiles for.
pub struct Nvrtc {
    /// The file the loader opened (from `dladdr`), else the name tried.
    pub path: String,
    /// `(major, minor)`, from `nvrtcVersion`.
    pub version: (u32, u32),
    /// The real architectures it compiles for (`86` for sm_86), ascending;
    /// empty when the library cannot say (then the device's is assumed).
    pub archs: Vec<u32>,
    functions: Functions,
}

impl std::fmt::Debug for Nvrtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvrtc")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("archs", &self.archs)
            .finish()
    }
}

impl std::fmt::Display for Nvrtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NVRTC {}.{} ({})",
            self.version.0, self.version.1, self.path
        )
    }
}

/// The NVRTC library of this process, loaded on first use; the error says
/// which files were tried.
pub fn get() -> Result<&'static Nvrtc, &'static str> {
    static LOADED: OnceLock<Result<Nvrtc, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let override_path = std::env::var_os(NVRTC_ENV).map(PathBuf::from);
            let exe = std::env::current_exe().ok();
            let exe_dir = exe.as_deref().and_then(Path::parent);
            let tried = candidates(override_path.as_deref(), exe_dir);
            let mut errors = Vec::new();
            for path in &tried {
                match load(path) {
                    Ok(nvrtc) => return Ok(nvrtc),
                    Err(why) => errors.push(why),
                }
            }
            Err(format!(
                "NVRTC (libnvrtc) is not installed: tried {}",
                errors.join("; ")
            ))
        })
        .as_ref()
        .map_err(String::as_str)
}

#[repr(C)]
struct DlInfo {
    fname: *const c_char,
    fbase: *mut c_void,
    sname: *const c_char,
    saddr: *mut c_void,
}

#[allow(unsafe_code)]
#[link(name = "dl")]
unsafe extern "C" {
    fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
}

/// Opens one candidate and resolves the functions.
#[allow(unsafe_code)]
fn load(path: &Path) -> Result<Nvrtc, String> {
    let shown = path.display().to_string();
    if path.is_absolute() || path.components().count() > 1 {
        // A path, not a name for the loader to search: skip what is absent
        // without a dlopen message.
        if !path.exists() {
            return Err(format!("{shown} (absent)"));
        }
    }
    // SAFETY: loading NVRTC runs only its initialisers, which have no
    // preconditions. The library is never closed (leaked), so the function
    // pointers below stay valid for the process's life.
    let library =
        unsafe { libloading::os::unix::Library::open(Some(path), libloading::os::unix::RTLD_NOW) }
            .map_err(|e| format!("{shown}: {e}"))?;
    let library: &'static libloading::os::unix::Library = Box::leak(Box::new(library));
    let symbol = |name: &str| -> Result<*mut c_void, String> {
        // SAFETY: the symbol is read as an untyped pointer; it is given its
        // type below.
        unsafe { library.get::<*mut c_void>(name.as_bytes()) }
            .map(|found| *found)
            .map_err(|_| format!("{shown}: no {name}"))
    };
    // SAFETY: each symbol is the NVRTC function of that name, whose C
    // signature (nvrtc.h, stable since CUDA 11) is the pointer type it is
    // cast to.
    macro_rules! function {
        ($name:literal, $type:ty) => {
            unsafe { std::mem::transmute::<*mut c_void, $type>(symbol($name)?) }
        };
    }
    macro_rules! optional {
        ($name:literal, $type:ty) => {
            symbol($name)
                .ok()
                .map(|found| unsafe { std::mem::transmute::<*mut c_void, $type>(found) })
        };
    }
    let functions = Functions {
        version: function!("nvrtcVersion", VersionFn),
        error_string: function!("nvrtcGetErrorString", ErrorStringFn),
        create_program: function!("nvrtcCreateProgram", CreateProgramFn),
        compile_program: function!("nvrtcCompileProgram", CompileProgramFn),
        destroy_program: function!("nvrtcDestroyProgram", DestroyProgramFn),
        program_log_size: function!("nvrtcGetProgramLogSize", SizeFn),
        program_log: function!("nvrtcGetProgramLog", ReadFn),
        ptx_size: function!("nvrtcGetPTXSize", SizeFn),
        ptx: function!("nvrtcGetPTX", ReadFn),
        cubin_size: function!("nvrtcGetCUBINSize", SizeFn),
        cubin: function!("nvrtcGetCUBIN", ReadFn),
        num_supported_archs: optional!("nvrtcGetNumSupportedArchs", ArchsFn),
        supported_archs: optional!("nvrtcGetSupportedArchs", ArchsFn),
    };
    let mut info = DlInfo {
        fname: std::ptr::null(),
        fbase: std::ptr::null_mut(),
        sname: std::ptr::null(),
        saddr: std::ptr::null_mut(),
    };
    // SAFETY: `version` points into the library just opened; `info` is a
    // valid out pointer whose strings are copied at once.
    let opened = unsafe { dladdr(functions.version as *const c_void, &mut info) };
    let file = if opened != 0 && !info.fname.is_null() {
        // SAFETY: dladdr filled `fname` with a NUL-terminated path.
        unsafe { CStr::from_ptr(info.fname) }
            .to_string_lossy()
            .into_owned()
    } else {
        shown.clone()
    };
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out pointers.
    let status = unsafe { (functions.version)(&mut major, &mut minor) };
    if status != 0 {
        return Err(format!("{file}: nvrtcVersion failed ({status})"));
    }
    let mut nvrtc = Nvrtc {
        path: file,
        version: (
            u32::try_from(major).unwrap_or(0),
            u32::try_from(minor).unwrap_or(0),
        ),
        archs: Vec::new(),
        functions,
    };
    nvrtc.archs = nvrtc.supported_archs();
    Ok(nvrtc)
}

/// What to read from a compiled program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Ptx,
    Cubin,
}

impl Nvrtc {
    #[allow(unsafe_code)]
    fn supported_archs(&self) -> Vec<u32> {
        let (Some(count), Some(list)) = (
            self.functions.num_supported_archs,
            self.functions.supported_archs,
        ) else {
            return Vec::new();
        };
        let mut n: c_int = 0;
        // SAFETY: a valid out pointer.
        if unsafe { count(&mut n) } != 0 || n <= 0 {
            return Vec::new();
        }
        let mut archs = vec![0 as c_int; usize::try_from(n).unwrap_or(0)];
        // SAFETY: `archs` holds the `n` entries NVRTC said it would write.
        if unsafe { list(archs.as_mut_ptr()) } != 0 {
            return Vec::new();
        }
        let mut archs: Vec<u32> = archs
            .into_iter()
            .filter_map(|a| u32::try_from(a).ok())
            .collect();
        archs.sort_unstable();
        archs
    }

    #[allow(unsafe_code)]
    fn error(&self, status: c_int) -> String {
        // SAFETY: returns a static NUL-terminated string (or NULL).
        let text = unsafe { (self.functions.error_string)(status) };
        if text.is_null() {
            return format!("NVRTC error {status}");
        }
        // SAFETY: as above.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }

    /// Compiles `code` (named `name` in messages) with `options`, returning
    /// the PTX (without its NUL) or CUBIN bytes, or the error and the
    /// compiler's log.
    #[allow(unsafe_code)]
    pub fn compile(
        &self,
        name: &str,
        code: &str,
        options: &[String],
        output: Output,
    ) -> Result<Vec<u8>, String> {
        let src = CString::new(code).map_err(|_| format!("{name}: the source holds a NUL byte"))?;
        let c_name = CString::new(format!("{name}.cu")).map_err(|e| e.to_string())?;
        let c_options = options
            .iter()
            .map(|o| CString::new(o.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let option_ptrs: Vec<*const c_char> = c_options.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: valid strings that outlive the program; no headers.
        let status = unsafe {
            (self.functions.create_program)(
                &mut prog,
                src.as_ptr(),
                c_name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if status != 0 {
            return Err(format!("{name}: {}", self.error(status)));
        }
        let n_options = c_int::try_from(option_ptrs.len()).map_err(|e| e.to_string())?;
        // SAFETY: `prog` was created above and is destroyed once, below;
        // the option strings outlive the call.
        let status =
            unsafe { (self.functions.compile_program)(prog, n_options, option_ptrs.as_ptr()) };
        let result = if status == 0 {
            let (size, read) = match output {
                Output::Ptx => (self.functions.ptx_size, self.functions.ptx),
                Output::Cubin => (self.functions.cubin_size, self.functions.cubin),
            };
            // SAFETY: `prog` compiled; the reader writes the size it said.
            unsafe { self.read(prog, size, read) }.map(|mut bytes| {
                if output == Output::Ptx {
                    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                    bytes.truncate(end);
                }
                bytes
            })
        } else {
            // SAFETY: as above.
            let log = unsafe {
                self.read(
                    prog,
                    self.functions.program_log_size,
                    self.functions.program_log,
                )
            }
            .map(|bytes| {
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                String::from_utf8_lossy(&bytes[..end]).into_owned()
            })
            .unwrap_or_default();
            Err(format!("{name}: {}\n{log}", self.error(status)))
        };
        // SAFETY: created above, destroyed once, not used after.
        let _ = unsafe { (self.functions.destroy_program)(&mut prog) };
        result
    }

    /// One of a program's outputs (log, PTX, CUBIN), by its size and read
    /// functions.
    ///
    /// # Safety
    /// `prog` must be a live program, and `size` / `read` a matching pair.
    #[allow(unsafe_code)]
    unsafe fn read(&self, prog: Program, size: SizeFn, read: ReadFn) -> Result<Vec<u8>, String> {
        let mut n = 0usize;
        // SAFETY: the caller's promise; `n` is a valid out pointer.
        let status = unsafe { size(prog, &mut n) };
        if status != 0 {
            return Err(self.error(status));
        }
        let mut bytes = vec![0u8; n];
        // SAFETY: `bytes` holds the `n` bytes NVRTC said it would write.
        let status = unsafe { read(prog, bytes.as_mut_ptr().cast()) };
        if status != 0 {
            return Err(self.error(status));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_override_is_the_only_candidate() {
        let chosen = candidates(
            Some(Path::new("/opt/nvrtc/libnvrtc.so.12.4")),
            Some(Path::new("/b/bin")),
        );
        assert_eq!(chosen, [PathBuf::from("/opt/nvrtc/libnvrtc.so.12.4")]);
    }

    /// Regression (issue 19): cudarc tried the unversioned `libnvrtc.so`
    /// first, which a CUDA 13 toolkit owns. The bundle's and any 12.x
    /// library come before it.
    #[test]
    fn nvrtc_12_comes_before_the_unversioned_name() {
        let chosen = candidates(None, Some(Path::new("/b/bin")));
        let at = |name: &str| {
            chosen
                .iter()
                .position(|p| p == Path::new(name))
                .unwrap_or_else(|| panic!("{name} not in {chosen:?}"))
        };
        assert_eq!(at("/b/bin/../lib/libnvrtc.so.12"), 0);
        assert_eq!(at("/b/bin/libnvrtc.so.12"), 1);
        assert!(at("libnvrtc.so.12") < at("libnvrtc.so"));
        assert!(at("libnvrtc.so") < at("libnvrtc.so.13"));
    }

    #[test]
    fn a_missing_file_is_reported_without_dlopen() {
        let err = load(Path::new("/nonexistent/libnvrtc.so.12")).unwrap_err();
        assert!(err.contains("absent"), "{err}");
    }
}
