//! `cargo xtask bench`: not implemented yet (a later issue fills this in).

use std::path::Path;

use anyhow::Result;

/// Returns the process exit code.
pub fn run(_root: &Path) -> Result<u8> {
    println!("bench: not implemented yet");
    Ok(0)
}
