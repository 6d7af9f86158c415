//! `tandem`: the command-line tool. See `tandem --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tandem_cli::run(tandem_cli::Cli::parse())
}
