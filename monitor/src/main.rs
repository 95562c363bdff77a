use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = vigie::cli::Cli::parse();
    vigie::cli::init_logging(&cli);
    match vigie::cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigie: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
