//! fathom's userspace: loads the kernel programs, reads their ring buffer and maps, attributes
//! what they report to cgroups / containers / pods, and renders it (`capture`) or exports it.
//!
//! Data flow: [`loader`] (BTF offsets → load → attach) → [`events`] (decode ring records) →
//! [`oom`] (OOM domain, paths) with [`cgroup`] / [`container`] (attribution) → [`capture`]
//! (table / JSON lines).

pub mod btf;
pub mod capture;
pub mod cgroup;
pub mod clock;
pub mod container;
pub mod events;
pub mod loader;
pub mod offsets;
pub mod oom;
pub mod privileges;

/// Printed on stderr once every program that can attach is attached; tests wait for it.
pub const READY_MARKER: &str = "fathom: ready";

/// Exit code for bad usage and missing prerequisites (privileges, BTF, tracefs, busy port).
pub const EXIT_PREREQUISITE: i32 = 2;
