//! The one integration-test binary: everything runs against the built-in simulator on
//! 127.0.0.1, through the library or the real `mpmirror` binary.

// A failing unwrap is how a test says "this should not happen"; the values compared
// exactly are exact (config defaults), not computed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::float_cmp,
    clippy::manual_assert
)]

mod integration {
    pub mod common;
    mod config;
    mod daemon;
    mod sim;
    mod sync;
    mod sync_faults;
    mod sync_process;
}
