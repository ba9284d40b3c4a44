//! fathom's kernel programs.
//!
//! Data flows out of the kernel two ways:
//! - **events**: one ring buffer ([`maps::EVENTS`]) of tagged `#[repr(C)]` records from
//!   `probe-common`, each starting with an `EventHeader`; reservation failures are counted per
//!   event kind in [`maps::EVENTS_LOST`] so no loss is silent;
//! - **counters** (later hook families): per-CPU maps read by userspace at scrape time.
//!
//! Only tracepoints / BTF tracepoints are used: they are stable attach points and they work on
//! kernels where kprobes and fentry are unavailable. Kernel struct offsets are not compiled in:
//! userspace computes them from the running kernel's BTF and writes them into [`OFFSETS`]
//! before loading (the verifier then sees them as constants).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod drops;
mod kread;
mod maps;
mod netdev;
mod netns;
mod oom;
mod reclaim;

use probe_common::{KernelOffsets, NetConfig, NetOffsets};

/// Overridden by userspace at load time (`EbpfLoader::override_global("OFFSETS", ..)`).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::zeroed();

/// Reads [`OFFSETS`]. The volatile read stops rustc from folding the all-zero initialiser into
/// the code: the real values only exist in the loaded `.rodata`.
#[inline(always)]
fn offsets() -> KernelOffsets {
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// Host builds (clippy, `cargo test --workspace`) only type-check the programs.
/// Offsets for the network programs (`override_global("NET_OFFSETS", ..)`).
#[unsafe(no_mangle)]
static NET_OFFSETS: NetOffsets = NetOffsets::zeroed();

/// Settings of the network programs (`override_global("NET_CONFIG", ..)`).
#[unsafe(no_mangle)]
static NET_CONFIG: NetConfig = NetConfig::zeroed();

#[inline(always)]
fn net_offsets() -> NetOffsets {
    unsafe { core::ptr::read_volatile(&NET_OFFSETS) }
}

#[inline(always)]
fn net_config() -> NetConfig {
    unsafe { core::ptr::read_volatile(&NET_CONFIG) }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
