//! Booting one kernel with qemu: software emulation (TCG; /dev/kvm is not usable for guest
//! kernels on this machine kind), 2 vCPUs, 1 GiB, serial console on stdout, written to a log
//! file that is also where the console is read from. The guest powers off by itself
//! (`-no-reboot` turns a kernel panic into an exit as well); a guest that takes longer than the
//! timeout is killed.

use std::{
    fs::{self, File},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

const QEMU: &str = "qemu-system-x86_64";
/// Time the guest gets to power off once it printed its result.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);

/// How a boot ended.
#[derive(Debug)]
pub enum End {
    Exited(ExitStatus),
    /// Killed after the timeout.
    TimedOut,
}

#[derive(Debug)]
pub struct Boot {
    /// Everything qemu wrote (serial console, then qemu's own errors).
    pub console: String,
    pub elapsed: Duration,
    pub end: End,
}

pub fn boot(vmlinuz: &Path, initrd: &Path, log: &Path, timeout: Duration) -> Result<Boot> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let started = Instant::now();
    let mut child = Command::new(QEMU)
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-m",
            "1G",
            "-smp",
            "2",
        ])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // panic=-1: reboot at once on a panic, which -no-reboot turns into qemu exiting.
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {QEMU} (apt-get install qemu-system-x86)"))?;
    let mut deadline = started + timeout;
    let mut result_seen = false;
    let end = loop {
        if let Some(st) = child.try_wait()? {
            break End::Exited(st);
        }
        if Instant::now() >= deadline {
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            break End::TimedOut;
        }
        if !result_seen
            && fs::read(log)
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains("@@fathom-vm EXIT="))
        {
            result_seen = true;
            deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
        }
        thread::sleep(Duration::from_millis(250));
    };
    let console = String::from_utf8_lossy(&fs::read(log)?).into_owned();
    Ok(Boot {
        console,
        elapsed: started.elapsed(),
        end,
    })
}
