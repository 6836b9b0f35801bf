//! The `mpmirror` binary: parse the command line, set up logging, run, map to an exit code.

use std::process::ExitCode;

use clap::Parser;
use mpmirror::cli::{self, Cli};
use mpmirror::config::LogFormat;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.load_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("mpmirror: {err}");
            return ExitCode::from(err.code);
        }
    };
    cli::init_tracing(config.as_ref().map_or(LogFormat::Text, |c| c.log_format));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mpmirror: cannot start the async runtime: {err}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(cli::run(cli, config)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("mpmirror: {err}");
            ExitCode::from(err.code)
        }
    }
}
