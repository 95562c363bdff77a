//! The demo portal binary; see `vigie_tests::portal` for what it does and why.

use std::process::ExitCode;

use clap::Parser;
use vigie_tests::portal::{self, Config};

fn main() -> ExitCode {
    match portal::run(Config::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-portal: {e}");
            ExitCode::FAILURE
        }
    }
}
