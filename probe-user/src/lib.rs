//! fathom's userspace: loads the kernel programs, reads their ring buffer and maps, attributes
//! what they report to cgroups / containers / pods, and renders it (`capture`) or exports it.
//!
//! Data flow: [`loader`] (BTF offsets → load → attach) → [`events`] (decode ring records) →
//! [`oom`] (OOM domain, paths) with [`cgroup`] / [`container`] (attribution), driven by
//! [`pipeline`] (one loaded object, one ring-buffer loop, typed events) → sinks: [`capture`]
//! (table / JSON lines) or [`metrics`] behind [`serve`] (Prometheus exporter).

pub mod attribution;
pub mod btf;
pub mod capture;
pub mod cgroup;
pub mod clock;
pub mod container;
pub mod drop_reason;
pub mod events;
pub mod input;
pub mod kallsyms;
pub mod loader;
pub mod metrics;
pub mod net;
pub mod net_counters;
pub mod netreport;
pub mod offsets;
pub mod oom;
pub mod packet;
pub mod pcap;
pub mod pipeline;
pub mod pressure;
pub mod privileges;
pub mod serve;

/// Printed on stderr once every program that can attach is attached; tests wait for it.
pub const READY_MARKER: &str = "fathom: ready";

/// Exit code for bad usage and missing prerequisites (privileges, BTF, tracefs, busy port).
pub const EXIT_PREREQUISITE: i32 = 2;
