//! The FastCGI demo application binary; see `vigie_tests::fcgi` for what it does and why.

use std::process::ExitCode;

use clap::Parser;
use vigie_tests::fcgi::{self, Config};

fn main() -> ExitCode {
    match fcgi::run(Config::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-fcgi: {e}");
            ExitCode::FAILURE
        }
    }
}
