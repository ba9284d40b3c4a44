//! Converts the kernel's `bpf_ktime_get_boot_ns()` stamps into wall-clock time.

use jiff::Timestamp;

/// Offset between CLOCK_REALTIME and CLOCK_BOOTTIME, sampled once.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    realtime_minus_boot_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks exist on every supported kernel.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl BootClock {
    pub fn new() -> Self {
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_minus_boot_ns: real - boot,
        }
    }

    /// Wall-clock time of a kernel boot-time stamp.
    pub fn to_timestamp(&self, boot_ns: u64) -> Timestamp {
        Timestamp::from_nanosecond(self.realtime_minus_boot_ns + boot_ns as i128)
            .unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

impl Default for BootClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_stamp_now_is_close_to_now() {
        let clock = BootClock::new();
        let boot_now = clock_ns(libc::CLOCK_BOOTTIME) as u64;
        let t = clock.to_timestamp(boot_now);
        let diff = (Timestamp::now().as_nanosecond() - t.as_nanosecond()).abs();
        assert!(diff < 1_000_000_000, "diff {diff} ns");
    }
}
