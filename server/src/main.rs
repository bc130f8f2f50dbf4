//! `kiemtra`: the central server's command line. It only parses arguments,
//! loads the settings, starts logging, binds the listener and maps errors to
//! exit codes; everything else lives in the `server` library.

use std::process::ExitCode;

use clap::Parser;
use server::cli::{Cli, CliError, Command};
use server::demo::{self, Prepared};
use server::settings::Settings;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref(), &cli.overrides()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("kiemtra: {e}");
            return ExitCode::from(2);
        }
    };
    let serving = matches!(cli.command, Command::Serve { .. });
    server::telemetry::init(if serving { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kiemtra: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if serving {
            serve(settings).await
        } else {
            server::cli::run(cli.command, settings).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiemtra: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn serve(settings: Settings) -> Result<(), CliError> {
    let addr = settings.server.addr.clone();
    let (state, prepared) = server::start(settings).await?;
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(source) => {
            let _ = state.db.close().await;
            return Err(CliError::Bind { addr, source });
        }
    };
    let local = listener
        .local_addr()
        .map_err(|source| CliError::Bind { addr, source })?;
    println!(
        "kiemtra {} listening on http://{local}",
        env!("CARGO_PKG_VERSION")
    );
    if let Prepared::Seeded(accounts) | Prepared::AlreadySeeded(accounts) = &prepared {
        print!("{}", demo::login_summary(accounts));
    }
    server::serve(listener, state, server::shutdown_signal()).await?;
    println!("kiemtra stopped cleanly");
    Ok(())
}
