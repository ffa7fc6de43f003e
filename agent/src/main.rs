use std::process::ExitCode;

fn main() -> ExitCode {
    let cli: emoe_agent::cli::Cli = emoe_agent::cli::parse_or_exit();
    match emoe_agent::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emoe-agent: {e}");
            e.exit_code()
        }
    }
}
