//! A server-mode `sync_core::protocol::hub::Hub` driven by arbitrary frames
//! and driver events on two connections (see `sync_core::fuzzing::hub` for
//! the input format and what is checked).
#![no_main]

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

static QUIET_CAUGHT_PANICS: Once = Once::new();
static CAUGHT: AtomicUsize = AtomicUsize::new(0);

/// The hub catches panics inside automerge and turns them into an aborted
/// exchange; the panic hook libfuzzer-sys installs would abort the process on
/// those before the hub could catch them. This one replaces it: it prints
/// panics (only the first few from inside automerge) and lets them unwind. A
/// panic the hub does not catch still reaches libfuzzer-sys, which then
/// aborts and saves the input as a crash.
fn install_panic_hook() {
    QUIET_CAUGHT_PANICS.call_once(|| {
        // Drop libfuzzer-sys's hook; what is left is the standard one.
        drop(std::panic::take_hook());
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_automerge = info
                .location()
                .is_some_and(|l| l.file().contains("automerge"));
            if !in_automerge || CAUGHT.fetch_add(1, Ordering::Relaxed) < 3 {
                default(info);
            }
        }));
    });
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    install_panic_hook();
    let _run = sync_core::fuzzing::hub(data);
});
