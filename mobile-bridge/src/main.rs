//! `kiemtra-field`: a command line that plays a tablet. The commands arrive
//! with the tablet issue; the binary exists so that the workspace shape is
//! fixed from the start.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "kiemtra-field {}: the tablet commands are not built yet",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
