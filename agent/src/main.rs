use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = emoe_agent::cli::Cli::parse();
    match emoe_agent::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emoe-agent: {e}");
            e.exit_code()
        }
    }
}
