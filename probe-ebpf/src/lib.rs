#![no_std]
// Exists so probe-user can name this crate as a build-dependency (cache invalidation only);
// the programs themselves are the `probe` binary built for bpfel-unknown-none.
