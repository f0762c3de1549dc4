//! `credpool`: manage a credential pool, watch it live, run the worker demo.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
