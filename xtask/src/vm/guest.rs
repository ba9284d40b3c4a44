//! What runs inside the VM and what it prints: the scenario's numbers (written to `/vm.conf`
//! for `init.sh`) and the parser of the serial console.
//!
//! `init.sh` prints `@@fathom-vm <what>` lines — `kernel <release>`, `btf yes|no`,
//! `ready <n>s` (or `exited-before-ready` / `not-ready`), `oom key=value…`, `udp key=value…`,
//! `EXIT=<fathom's exit code>` — and `begin <section>` / `end <section>` around fathom's
//! stderr, fathom's stdout and the kernel's OOM/BPF messages. The console also carries the
//! firmware's escape sequences (sometimes on the marker's own line) and CRs: markers are found
//! anywhere in a line.

use std::collections::BTreeMap;

use serde_json::json;

const MARKER: &str = "@@fathom-vm ";

/// The guest's script, in numbers.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// How long `/init` waits for fathom's ready line.
    pub ready_secs: u32,
    /// fathom's own `--duration`: a bound should SIGTERM never come.
    pub capture_secs: u32,
    /// How long `alloc` may live before the OOM kill counts as missing.
    pub oom_secs: u32,
    /// Wait between the last datagram and stopping fathom.
    pub settle_secs: u32,
    /// What `alloc` tries to allocate, more than the limit.
    pub alloc_mib: u32,
    /// `memory.max` of the cgroup `alloc` runs in.
    pub limit_bytes: u64,
    /// A loopback UDP port nobody listens on.
    pub udp_port: u16,
    pub udp_count: u32,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            // fathom is ready in ~2 s under TCG; emulation can be much slower on a busy host.
            ready_secs: 120,
            capture_secs: 600,
            oom_secs: 60,
            settle_secs: 5,
            alloc_mib: 64,
            limit_bytes: 32 << 20,
            udp_port: 9,
            udp_count: 5,
        }
    }
}

impl Scenario {
    /// `/vm.conf`, sourced by `init.sh`.
    pub fn conf(&self) -> String {
        format!(
            "READY_SECS={}\nCAPTURE_SECS={}\nOOM_SECS={}\nSETTLE_SECS={}\nALLOC_MIB={}\n\
             LIMIT_BYTES={}\nUDP_PORT={}\nUDP_COUNT={}\n",
            self.ready_secs,
            self.capture_secs,
            self.oom_secs,
            self.settle_secs,
            self.alloc_mib,
            self.limit_bytes,
            self.udp_port,
            self.udp_count
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "ready_secs": self.ready_secs,
            "oom_alloc_mib": self.alloc_mib,
            "oom_limit_bytes": self.limit_bytes,
            "udp_port": self.udp_port,
            "udp_datagrams": self.udp_count,
        })
    }
}

/// Everything the guest printed between markers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Console {
    /// `uname -r` in the guest.
    pub release: Option<String>,
    pub btf: Option<bool>,
    /// `ready 2s`, `exited-before-ready 1s`, `not-ready 120s`.
    pub ready: Option<String>,
    /// `pid`, `cgroup_id`, `limit`, `rc`, `oom_kill` (the cgroup's memory.events count).
    pub oom: BTreeMap<String, String>,
    /// `port`, `sent`, `netns`.
    pub udp: BTreeMap<String, String>,
    pub stderr: Vec<String>,
    pub stdout: Vec<String>,
    pub dmesg: Vec<String>,
    /// fathom's exit code.
    pub exit: Option<i32>,
}

impl Console {
    pub fn parse(text: &str) -> Self {
        let mut c = Console::default();
        let mut section: Option<String> = None;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            let Some(at) = line.find(MARKER) else {
                match section.as_deref() {
                    Some("stderr") => c.stderr.push(line.to_owned()),
                    Some("stdout") => c.stdout.push(line.to_owned()),
                    Some("dmesg") => c.dmesg.push(line.to_owned()),
                    _ => {}
                }
                continue;
            };
            let rest = line[at + MARKER.len()..].trim();
            let (what, args) = rest.split_once(' ').unwrap_or((rest, ""));
            match what {
                "kernel" => c.release = Some(args.to_owned()),
                "btf" => c.btf = Some(args == "yes"),
                "ready" | "exited-before-ready" | "not-ready" => c.ready = Some(rest.to_owned()),
                "oom" => c.oom = key_values(args),
                "udp" => c.udp = key_values(args),
                "begin" => section = Some(args.to_owned()),
                "end" => section = None,
                _ => {
                    if let Some(rc) = what.strip_prefix("EXIT=") {
                        c.exit = rc.parse().ok();
                    }
                }
            }
        }
        c
    }

    pub fn is_ready(&self) -> bool {
        self.ready
            .as_deref()
            .is_some_and(|r| r.starts_with("ready "))
    }
}

fn key_values(s: &str) -> BTreeMap<String, String> {
    s.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_markers_and_sections() {
        // As a console shows it: CRs, the firmware's escape sequences before the first marker.
        let text = "Booting from ROM...\r\n\
            \x1bc\x1b[?7l\x1b[2J@@fathom-vm kernel 6.1.0-56-cloud-amd64\r\n\
            @@fathom-vm btf yes\r\n\
            @@fathom-vm ready 2s\r\n\
            @@fathom-vm oom pid=112 cgroup_id=23 limit=33554432 rc=137 oom_kill=1\r\n\
            @@fathom-vm udp port=9 sent=5 netns=4026531840\r\n\
            @@fathom-vm begin stderr\r\n\
            fathom: ready: attached oom_mark_victim\r\n\
            @@fathom-vm end stderr\r\n\
            @@fathom-vm begin stdout\r\n\
            {\"kind\":\"oom_kill\"}\r\n\
            @@fathom-vm end stdout\r\n\
            @@fathom-vm EXIT=0\r\n\
            [   11.234496] reboot: Power down\r\n";
        let c = Console::parse(text);
        assert_eq!(c.release.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(c.btf, Some(true));
        assert!(c.is_ready());
        assert_eq!(c.oom["pid"], "112");
        assert_eq!(c.oom["oom_kill"], "1");
        assert_eq!(c.udp["sent"], "5");
        assert_eq!(c.stderr, ["fathom: ready: attached oom_mark_victim"]);
        assert_eq!(c.stdout, ["{\"kind\":\"oom_kill\"}"]);
        assert_eq!(c.exit, Some(0));
    }

    #[test]
    fn conf_sets_every_variable_init_reads() {
        let conf = Scenario::default().conf();
        let script = include_str!("init.sh");
        for line in conf.lines() {
            let var = line.split('=').next().unwrap();
            assert!(
                script.contains(&format!("${var}")) || script.contains(&format!("${{{var}}}")),
                "init.sh does not use {var}"
            );
        }
    }
}
