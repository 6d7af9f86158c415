//! Compiles every kernel source with NVRTC to PTX for the given
//! architectures and writes `<dir>/<module>.compute_<arch>.ptx`, for
//! `scripts/cuda-check` to assemble with `ptxas`. Fails (status 1) when
//! NVRTC is missing or any source does not compile.
//!
//!     cargo run -p tandem-kernels --example cuda_check -- DIR 86 89 90

use std::process::ExitCode;

use tandem_kernels::runtime::{self, Target};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: cuda_check DIR ARCH... (ARCH as 86, 89, 90)");
        return ExitCode::from(2);
    };
    let archs: Vec<(u32, u32)> = args
        .filter_map(|a| a.parse::<u32>().ok())
        .map(|a| (a / 10, a % 10))
        .collect();
    let nvrtc = match tandem_kernels::nvrtc::get() {
        Ok(nvrtc) => nvrtc,
        Err(why) => {
            eprintln!(
                "cuda_check: {why}; put its directory on LD_LIBRARY_PATH or set TANDEM_NVRTC"
            );
            return ExitCode::FAILURE;
        }
    };
    println!("{nvrtc}");
    if let Err(err) = std::fs::create_dir_all(&dir) {
        eprintln!("cuda_check: {dir}: {err}");
        return ExitCode::FAILURE;
    }
    let mut failed = false;
    for source in tandem_kernels::SOURCES {
        for &(major, minor) in &archs {
            match runtime::compile(source, Target::Ptx(major, minor)) {
                Ok(ptx) => {
                    let path = format!("{dir}/{}.compute_{major}{minor}.ptx", source.module);
                    if let Err(err) = std::fs::write(&path, ptx) {
                        eprintln!("cuda_check: {path}: {err}");
                        failed = true;
                    }
                }
                Err(log) => {
                    eprintln!(
                        "cuda_check: {} for compute_{major}{minor} failed:\n{log}",
                        source.module
                    );
                    failed = true;
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
