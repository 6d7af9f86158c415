//! `tandem`: the command-line tool. See `tandem --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tandem_producer::cli::run(tandem_producer::cli::Cli::parse())
}
