//! `cargo xtask vm`: boot other Linux kernels under qemu and smoke-test fathom on each.
//!
//! fathom is developed and tested on this host's kernel only; SREs run it on many. For every
//! kernel asked for, this task:
//!
//! 1. gets the kernel ([`kernels`]): a Debian `cloud-amd64` kernel package of that series,
//!    downloaded with a private APT configuration under `target/vm/apt/` (the host's APT setup
//!    is not touched), its `vmlinuz` kept under `target/vm/kernels/<series>/`; or a `vmlinuz`
//!    file given by path;
//! 2. boots it with qemu (TCG) on one initramfs ([`initramfs`]) holding busybox, the release
//!    `fathom` with its shared libraries and two static helpers; its `/init` (`init.sh`)
//!    starts `fathom capture --output json`, waits for the ready line, makes a memory cgroup
//!    (`memory.max` 32 MiB) OOM-kill `alloc`, sends UDP datagrams to a closed loopback port
//!    (`NO_SOCKET` drops), stops fathom and prints its stderr, stdout and exit code on the
//!    serial console ([`qemu`]);
//! 3. reads the console ([`report`]): which programs attached and why the others did not,
//!    whether the OOM kill and the drops came out as events with the right values;
//! 4. prints a table and writes `target/vm/results.json`.
//!
//! Exit code 1 when a kernel fails: the VM gives no result, fathom does not start, crashes or
//! exits non-zero, a program is refused without a reason fathom states on purpose (a verifier
//! rejection, an attach error), or an attached program's event is missing or wrong. A program
//! fathom itself declares unsupported on that kernel (`unsupported_reason` in the loader) is
//! expected and reported as such. Everything this task creates lives under `target/vm/`;
//! the only host change is installing qemu-system-x86.

mod guest;
mod initramfs;
mod kernels;
mod qemu;
mod report;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};

use self::{guest::Scenario, kernels::Kernel, report::KernelResult};

/// The Debian package with qemu-system-x86_64, installed on first use.
const QEMU_PACKAGE: &str = "qemu-system-x86";

/// `cargo xtask vm` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Kernels to boot (comma-separated): a Debian kernel series such as 5.10 (bullseye),
    /// 6.1 (bookworm), 6.12 (trixie), 6.16 … 7.x (trixie-backports) — the newest cloud-amd64
    /// package of that series — or the path of a vmlinuz / bzImage file.
    #[arg(long, value_delimiter = ',', default_value = "5.10,6.1,6.12")]
    pub kernel: Vec<String>,
    /// Look for newer kernel packages (apt-get update) instead of reusing the cached ones.
    #[arg(long)]
    pub refresh: bool,
    /// Seconds one VM may run before it is killed and counted as failed.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// Returns the process exit code: 0 when fathom works as expected on every kernel, 1 otherwise.
pub fn run(root: &Path, args: &Args) -> Result<u8> {
    crate::setup::install_packages(&[QEMU_PACKAGE])?;
    let dir = crate::target_dir(root).join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    // Kernels first: a typo in --kernel fails before the build.
    let mut apt = kernels::Apt::new(&dir.join("apt"));
    let mut wanted = Vec::new();
    for spec in &args.kernel {
        let kernel = kernels::get(&mut apt, &dir.join("kernels"), spec.trim(), args.refresh)
            .with_context(|| format!("kernel {spec}"))?;
        step(&format!("kernel {}: {}", kernel.label, kernel.origin()));
        wanted.push(kernel);
    }

    let code = crate::build(root, true)?;
    if code != 0 {
        return Ok(code);
    }
    let scenario = Scenario::default();
    let fathom = crate::target_dir(root).join("release/fathom");
    let initrd = initramfs::build(&fathom, &dir, &scenario)?;
    step(&format!("initramfs {}", initrd.display()));

    let mut results = Vec::new();
    for kernel in &wanted {
        results.push(boot_one(&dir, kernel, &initrd, &scenario, args.timeout));
    }

    println!();
    report::print_table(&results);
    let path = dir.join("results.json");
    let json = serde_json::json!({
        "scenario": scenario.to_json(),
        "kernels": results.iter().map(KernelResult::to_json).collect::<Vec<_>>(),
    });
    fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("\nresults: {}", path.display());
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.kernel.as_str())
        .collect();
    if failed.is_empty() {
        Ok(0)
    } else {
        eprintln!("vm: fathom failed on {}", failed.join(", "));
        Ok(1)
    }
}

fn step(what: &str) {
    println!("vm: {what}");
}

/// Boots one kernel and judges what its console shows. A VM that cannot even start is a
/// failed result too, so that the other kernels still run.
fn boot_one(
    dir: &Path,
    kernel: &Kernel,
    initrd: &Path,
    scenario: &Scenario,
    timeout: u64,
) -> KernelResult {
    // A label can be a path: keep the log's name one file name.
    let name = kernel.label.replace('/', "_");
    let log: PathBuf = dir.join("logs").join(format!("{name}.console.log"));
    let boot_and_judge = || {
        step(&format!("booting {} (timeout {timeout} s)", kernel.label));
        match qemu::boot(&kernel.vmlinuz, initrd, &log, Duration::from_secs(timeout)) {
            Ok(boot) => report::judge(kernel, &boot, scenario, &log),
            Err(e) => KernelResult::vm_error(kernel, &format!("{e:#}"), &log),
        }
    };
    let mut result = boot_and_judge();
    // A guest that died before /init never ran fathom: an emulation fault of qemu's TCG (seen
    // once: 6.12 panicked in sched_clock_cpu while booting, the next boot was fine). One more
    // boot, said in the notes; fathom's own failures are never retried.
    if let Some(first) = result
        .failures
        .iter()
        .find(|f| f.contains("before /init"))
        .cloned()
    {
        let _ = fs::copy(&log, log.with_extension("log.first-boot"));
        step(&format!(
            "{}: the guest died before /init; booting it again",
            kernel.label
        ));
        result = boot_and_judge();
        result.notes.push(format!(
            "first boot died before /init and was retried: {first}"
        ));
    }
    step(&format!(
        "{}: {} ({})",
        kernel.label,
        if result.ok() { "ok" } else { "FAILED" },
        log.display()
    ));
    result
}
