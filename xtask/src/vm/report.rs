//! Judging one kernel's console, and the table / JSON of all of them.
//!
//! fathom logs one line per program (`--log-format json`: `"message":"attached"` or
//! `"message":"not attached"` with `program` and `error`), then `fathom: ready: attached …`,
//! and at the end `fathom: N events, M lost`. A refusal is *stated* when the loader made it on
//! purpose, knowing the kernel lacks what the program needs (`unsupported_reason` in
//! probe-user/src/loader.rs, or the network programs' BTF members): that is expected on old
//! kernels. Anything else — a verifier rejection, an attach error — is a failure.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{
    guest::{Console, Scenario},
    kernels::Kernel,
    qemu::{Boot, End},
};

/// How the loader words the refusals it makes on purpose (probe-user/src/loader.rs).
const STATED_REFUSALS: &[&str] = &[
    // unsupported_reason(): "<tracepoint> passes only … on this kernel (needs Linux >= …)".
    "on this kernel (needs Linux",
    // load_with(): the network programs when net_offsets() finds a member missing.
    "kernel BTF lacks what it needs",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub name: String,
    pub attached: bool,
    pub error: Option<String>,
    /// Refused with a reason the loader states on purpose.
    pub expected: bool,
    /// The object program attached in its place (`skb_kfree_skb_legacy` before 5.17).
    pub variant: Option<String>,
}

/// One event check (OOM kill, packet drop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// `pass`, `fail`, `n/a` (program not attached) or `-` (no result).
    pub status: &'static str,
    pub detail: String,
}

impl Check {
    fn new(status: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }

    fn cell(&self) -> String {
        match self.status {
            "pass" => format!("yes ({})", self.detail),
            "fail" => "FAIL (see notes)".to_owned(),
            "n/a" => format!("n/a ({})", self.detail),
            _ => "-".to_owned(),
        }
    }

    fn to_json(&self) -> Value {
        json!({"status": self.status, "detail": self.detail})
    }
}

#[derive(Clone, Debug)]
pub struct KernelResult {
    pub kernel: String,
    /// Debian package and version.
    pub package: Option<(String, String)>,
    pub release: Option<String>,
    pub seconds: Option<f64>,
    pub fathom_exit: Option<i32>,
    pub programs: Vec<Program>,
    pub oom: Check,
    pub drop: Check,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    pub log: PathBuf,
}

impl KernelResult {
    fn empty(kernel: &Kernel, log: &Path) -> Self {
        Self {
            kernel: kernel.label.clone(),
            package: kernel.package.clone(),
            release: None,
            seconds: None,
            fathom_exit: None,
            programs: Vec::new(),
            oom: Check::new("-", ""),
            drop: Check::new("-", ""),
            failures: Vec::new(),
            notes: Vec::new(),
            log: log.to_path_buf(),
        }
    }

    /// The VM could not be run at all.
    pub fn vm_error(kernel: &Kernel, error: &str, log: &Path) -> Self {
        let mut r = Self::empty(kernel, log);
        r.failures.push(format!("VM: {error}"));
        r
    }

    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "kernel": self.kernel,
            "package": self.package.as_ref().map(|(p, _)| p),
            "package_version": self.package.as_ref().map(|(_, v)| v),
            "release": self.release,
            "ok": self.ok(),
            "seconds": self.seconds.map(|s| (s * 10.0).round() / 10.0),
            "fathom_exit": self.fathom_exit,
            "programs": self.programs.iter().map(|p| json!({
                "name": p.name,
                "attached": p.attached,
                "error": p.error,
                "expected": p.expected,
            })).collect::<Vec<_>>(),
            "oom_event": self.oom.to_json(),
            "drop_event": self.drop.to_json(),
            "failures": self.failures,
            "notes": self.notes,
            "console_log": self.log,
        })
    }
}

/// Reads what the guest printed and decides.
pub fn judge(kernel: &Kernel, boot: &Boot, scenario: &Scenario, log: &Path) -> KernelResult {
    let mut r = KernelResult::empty(kernel, log);
    r.seconds = Some(boot.elapsed.as_secs_f64());
    let c = Console::parse(&boot.console);
    r.release = c.release.clone();
    r.fathom_exit = c.exit;
    let Some(exit) = c.exit else {
        r.failures.push(no_result(boot, &c));
        return r;
    };
    if let End::TimedOut = boot.end {
        r.notes
            .push("qemu did not exit after the guest powered off".into());
    }
    if c.btf == Some(false) {
        r.notes.push("kernel has no /sys/kernel/btf/vmlinux".into());
    }

    r.programs = programs(&c.stderr);
    for p in &r.programs {
        match (&p.error, p.expected) {
            (Some(e), true) => r.notes.push(format!("{} not attached: {e}", p.name)),
            (Some(e), false) => r
                .failures
                .push(format!("{} refused: {}", p.name, first_line(e))),
            (None, _) => {}
        }
    }
    for line in &c.stderr {
        if line.contains("panicked at") {
            r.failures.push(format!("fathom panicked: {line}"));
        }
        if let Some(w) = other_warning(line) {
            r.notes.push(w);
        }
        if let Some(lost) = line
            .strip_prefix("fathom: ")
            .and_then(|l| l.split_once(" events, "))
            .and_then(|(_, rest)| rest.strip_suffix(" lost"))
            && lost != "0"
        {
            r.notes.push(format!("{lost} events lost"));
        }
    }
    for line in &c.dmesg {
        if ["BUG:", "WARNING:", "Oops"]
            .iter()
            .any(|m| line.contains(m))
        {
            r.notes.push(format!("kernel: {}", line.trim()));
        }
    }
    if !c.is_ready() {
        r.failures.push(format!(
            "fathom did not get ready ({}): {}",
            c.ready.as_deref().unwrap_or("no ready marker"),
            last_fathom_line(&c.stderr)
        ));
    }
    if exit != 0 {
        r.failures.push(format!(
            "fathom exited with {exit}: {}",
            last_fathom_line(&c.stderr)
        ));
    }
    if c.is_ready() {
        let events: Vec<Value> = c
            .stdout
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        r.oom = check_oom(&r.programs, &c, &events, scenario);
        r.drop = check_drop(&r.programs, &c, &events);
        for check in [&r.oom, &r.drop] {
            if check.status == "fail" {
                r.failures.push(check.detail.clone());
            }
        }
    }
    r
}

/// Why there is no EXIT line.
fn no_result(boot: &Boot, c: &Console) -> String {
    let last = boot
        .console
        .lines()
        .map(|l| l.trim_end_matches('\r').trim())
        .rfind(|l| !l.is_empty())
        .unwrap_or("(no output)");
    let how = match &boot.end {
        End::TimedOut => format!("timed out after {:.0} s", boot.elapsed.as_secs_f64()),
        End::Exited(st) if boot.console.contains("Kernel panic") => {
            format!("kernel panic (qemu {st})")
        }
        End::Exited(st) => format!("qemu exited ({st})"),
    };
    let reached = if c.release.is_some() {
        "after /init started"
    } else {
        "before /init"
    };
    format!("no result from the guest: {how} {reached}; last console line: {last}")
}

/// Per-program status from fathom's JSON log lines (and the ready line, should the log lines
/// be missing).
fn programs(stderr: &[String]) -> Vec<Program> {
    let mut out: Vec<Program> = Vec::new();
    for line in stderr {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            if let Some(list) = line.strip_prefix("fathom: ready: attached ") {
                let list = list.split(';').next().unwrap_or(list);
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if !out.iter().any(|p| p.name == name) {
                        out.push(Program {
                            name: name.to_owned(),
                            attached: true,
                            error: None,
                            expected: false,
                            variant: None,
                        });
                    }
                }
            }
            continue;
        };
        let f = &v["fields"];
        let (Some(message), Some(name)) = (f["message"].as_str(), f["program"].as_str()) else {
            continue;
        };
        let program = match message {
            m if m.starts_with("attached") => Program {
                name: name.to_owned(),
                attached: true,
                error: None,
                expected: false,
                variant: f["variant"].as_str().map(str::to_owned),
            },
            "not attached" => {
                let error = f["error"]
                    .as_str()
                    .unwrap_or("(no reason given)")
                    .to_owned();
                Program {
                    name: name.to_owned(),
                    attached: false,
                    expected: STATED_REFUSALS.iter().any(|m| error.contains(m)),
                    error: Some(error),
                    variant: None,
                }
            }
            _ => continue,
        };
        out.retain(|p| p.name != program.name);
        out.push(program);
    }
    out
}

/// A WARN/ERROR log line other than a program's status, as `message (field=value, …)`.
fn other_warning(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    let level = v["level"].as_str()?;
    if level != "WARN" && level != "ERROR" {
        return None;
    }
    let fields = v["fields"].as_object()?;
    let message = fields.get("message")?.as_str()?;
    if message == "not attached" {
        return None;
    }
    let rest: Vec<String> = fields
        .iter()
        .filter(|(k, _)| *k != "message")
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            )
        })
        .collect();
    Some(if rest.is_empty() {
        format!("fathom {level}: {message}")
    } else {
        format!("fathom {level}: {message} ({})", rest.join(", "))
    })
}

fn attached(programs: &[Program], name: &str) -> Result<(), String> {
    match programs.iter().find(|p| p.name == name) {
        Some(p) if p.attached => Ok(()),
        Some(p) if p.expected => Err(format!("{name} unsupported here")),
        Some(_) => Err(format!("{name} not attached")),
        None => Err(format!("{name} not reported by fathom")),
    }
}

/// The OOM kill of `alloc`: an `oom_kill` event for its pid, with its cgroup and the limit;
/// the cgroup is a `memory.oom.group`, so its idle sibling is killed too and reported.
fn check_oom(programs: &[Program], c: &Console, events: &[Value], s: &Scenario) -> Check {
    if let Err(why) = attached(programs, "oom_mark_victim") {
        return Check::new("n/a", why);
    }
    let num = |k: &str| c.oom.get(k).and_then(|v| v.parse::<u64>().ok());
    let (Some(pid), Some(cgroup_id)) = (num("pid"), num("cgroup_id")) else {
        return Check::new("fail", "the guest did not run the OOM scenario");
    };
    let Some(ev) = events
        .iter()
        .find(|e| e["kind"] == "oom_kill" && e["victim"]["pid"].as_u64() == Some(pid))
    else {
        return Check::new(
            "fail",
            match num("oom_kill") {
                Some(0) | None => format!(
                    "no OOM kill happened in the guest (alloc exit {})",
                    c.oom.get("rc").map_or("?", String::as_str)
                ),
                Some(_) => format!("OOM kill of pid {pid} not reported"),
            },
        );
    };
    let mut wrong = Vec::new();
    let mut expect = |what: &str, got: &Value, want: Value| {
        if *got != want {
            wrong.push(format!("{what} {got} (want {want})"));
        }
    };
    expect("victim.comm", &ev["victim"]["comm"], json!("alloc"));
    expect("memcg.id", &ev["memcg"]["id"], json!(cgroup_id));
    expect(
        "memcg.limit_bytes",
        &ev["memcg"]["limit_bytes"],
        json!(s.limit_bytes),
    );
    expect(
        "oom_domain.limit_bytes",
        &ev["oom_domain"]["limit_bytes"],
        json!(s.limit_bytes),
    );
    // memory.oom.group is set on the cgroup: the event names it, and the idle sibling the
    // kernel killed along with alloc has an event of its own.
    expect(
        "oom_group.path",
        &ev["oom_group"]["path"],
        ev["memcg"]["path"].clone(),
    );
    if let Some(sibling) = num("sibling") {
        match events
            .iter()
            .find(|e| e["kind"] == "oom_kill" && e["victim"]["pid"].as_u64() == Some(sibling))
        {
            Some(sib) => expect(
                "sibling's oom_group.path",
                &sib["oom_group"]["path"],
                ev["memcg"]["path"].clone(),
            ),
            None => wrong.push(format!(
                "no event for the group kill of sibling pid {sibling}"
            )),
        }
    }
    // alloc's charges went through memcg reclaim before the kill: with the reclaim programs
    // attached, the event carries a stall (they are stated unsupported where the vmscan
    // tracepoints lack what they need; the pressure is then null).
    let reclaim = programs
        .iter()
        .any(|p| p.name == "memcg_reclaim_end" && p.attached);
    let stall = ev["pressure"]["stall_total_seconds"].as_f64();
    if reclaim && !stall.is_some_and(|s| s > 0.0) {
        wrong.push(format!(
            "pressure.stall_total_seconds {} (want > 0: the reclaim programs saw no stall)",
            ev["pressure"]["stall_total_seconds"]
        ));
    }
    if !wrong.is_empty() {
        return Check::new("fail", format!("OOM event wrong: {}", wrong.join(", ")));
    }
    let stall = match stall {
        Some(s) if reclaim => format!(", reclaim stall {:.1} ms", s * 1e3),
        _ => String::new(),
    };
    Check::new(
        "pass",
        format!("limit_bytes {}, group kill of 2{stall}", s.limit_bytes),
    )
}

/// The datagrams to the closed port: `packet_drop` events with reason NO_SOCKET for it
/// (NOT_SPECIFIED from the variant for kernels without drop reasons).
fn check_drop(programs: &[Program], c: &Console, events: &[Value]) -> Check {
    if let Err(why) = attached(programs, "skb_kfree_skb") {
        return Check::new("n/a", why);
    }
    let legacy = programs
        .iter()
        .any(|p| p.name == "skb_kfree_skb" && p.variant.as_deref() == Some("skb_kfree_skb_legacy"));
    let reason = if legacy { "NOT_SPECIFIED" } else { "NO_SOCKET" };
    let num = |k: &str| c.udp.get(k).and_then(|v| v.parse::<u64>().ok());
    let (Some(port), Some(sent)) = (num("port"), num("sent")) else {
        return Check::new("fail", "the guest did not send the datagrams");
    };
    let drops: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["kind"] == "packet_drop"
                && e["reason"] == reason
                && e["packet"]["dst_port"].as_u64() == Some(port)
        })
        .collect();
    let Some(first) = drops.first() else {
        return Check::new(
            "fail",
            format!("no {reason} drop event for the {sent} datagrams to port {port}"),
        );
    };
    let mut wrong = Vec::new();
    if let Some(netns) = num("netns")
        && first["netns"].as_u64() != Some(netns)
    {
        wrong.push(format!("netns {} (want {netns})", first["netns"]));
    }
    if first["device"] != "lo" {
        wrong.push(format!("device {} (want \"lo\")", first["device"]));
    }
    if !wrong.is_empty() {
        return Check::new("fail", format!("drop event wrong: {}", wrong.join(", ")));
    }
    Check::new("pass", format!("{}/{sent} {reason}", drops.len()))
}

/// The gist of a refusal: aya's message, and for a verifier rejection the verifier's last
/// two lines before its statistics (the full text is in results.json).
fn first_line(s: &str) -> String {
    let Some((head, log)) = s.split_once("Verifier output: ") else {
        return s.lines().next().unwrap_or(s).to_owned();
    };
    let lines: Vec<&str> = log
        .lines()
        .take_while(|l| !l.starts_with("verification time") && !l.starts_with("processed "))
        .collect();
    let gist = lines[lines.len().saturating_sub(2)..].join(" / ");
    format!("{} … {gist}", head.trim_end_matches(['.', ' ']))
}

/// fathom's last own line on stderr (its error message, when it failed).
fn last_fathom_line(stderr: &[String]) -> String {
    stderr
        .iter()
        .rfind(|l| l.starts_with("fathom: ") || l.contains("panicked at"))
        .cloned()
        .unwrap_or_else(|| "(nothing on stderr)".to_owned())
}

/// `kernel | programs attached | OOM event | drop event | notes`, one row per kernel.
pub fn print_table(results: &[KernelResult]) {
    let header = [
        "kernel",
        "programs attached",
        "OOM event",
        "drop event",
        "notes",
    ];
    let rows: Vec<[String; 5]> = results.iter().map(row).collect();
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i < 4 {
                s.push_str(&format!("{cell:<w$} | ", w = widths[i]));
            } else {
                s.push_str(cell);
            }
        }
        println!("{}", s.trim_end());
    };
    line(header);
    line([
        &"-".repeat(widths[0]),
        &"-".repeat(widths[1]),
        &"-".repeat(widths[2]),
        &"-".repeat(widths[3]),
        "-----",
    ]);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
}

fn row(r: &KernelResult) -> [String; 5] {
    let kernel = match &r.release {
        Some(rel) => format!("{} ({rel})", r.kernel),
        None => r.kernel.clone(),
    };
    let attached = r.programs.iter().filter(|p| p.attached).count();
    let refused: Vec<&str> = r
        .programs
        .iter()
        .filter(|p| !p.attached)
        .map(|p| p.name.as_str())
        .collect();
    let programs = match (r.programs.len(), refused.is_empty()) {
        (0, _) => "-".to_owned(),
        (n, true) => format!("{attached}/{n}"),
        (n, false) => format!("{attached}/{n} (not {})", refused.join(", ")),
    };
    let notes: Vec<String> = r
        .failures
        .iter()
        .map(|f| format!("FAIL: {f}"))
        .chain(r.notes.iter().cloned())
        .collect();
    [
        kernel,
        programs,
        r.oom.cell(),
        r.drop.cell(),
        if notes.is_empty() {
            "ok".to_owned()
        } else {
            notes.join("; ")
        },
    ]
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;
    use std::{process::ExitStatus, time::Duration};

    use super::*;

    // Lines as fathom printed them in the guests (5.10 before the loader stated its reason,
    // 6.12).
    const ATTACHED: &str = r#"{"timestamp":"2026-11-26T17:53:45.582884Z","level":"INFO","fields":{"message":"attached","program":"oom_mark_victim"},"target":"fathom::loader"}"#;
    const ATTACHED_DROPS: &str = r#"{"timestamp":"2026-11-26T17:53:45.582884Z","level":"INFO","fields":{"message":"attached","program":"skb_kfree_skb"},"target":"fathom::loader"}"#;
    const VERIFIER: &str = r#"{"timestamp":"2026-11-26T17:53:45.592277Z","level":"WARN","fields":{"message":"not attached","program":"skb_kfree_skb","error":"the BPF_PROG_LOAD syscall returned Permission denied (os error 13). Verifier output: arg#0 type is not a struct\nUnrecognized arg#0 type PTR\n; btf_arg(self, n)\n0: (79) r2 = *(u64 *)(r1 +16)\nfunc 'kfree_skb' doesn't have 3-th argument\ninvalid bpf_context access off=16 size=8\nverification time 710 usec\nstack depth 0\nprocessed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n: Permission denied (os error 13)"},"target":"fathom::loader"}"#;
    const STATED: &str = r#"{"timestamp":"2026-11-26T18:10:01.1Z","level":"WARN","fields":{"message":"not attached","program":"skb_kfree_skb","error":"skb:kfree_skb passes no drop reason on this kernel (needs Linux >= 5.17); packet drops and reassembly failures are not reported"},"target":"fathom::loader"}"#;
    const OOM: &str = r#"{"time":"2026-11-26T18:09:11.71254692Z","kind":"oom_kill","victim":{"pid":165,"tgid":165,"comm":"alloc","cgroup_id":27,"cgroup_path":"/fathom-vm-oom"},"trigger":{"pid":165,"tgid":165,"comm":"alloc","cgroup_id":27},"memcg":{"path":"/fathom-vm-oom","id":27,"limit_bytes":33554432,"usage_bytes":33554432},"oom_domain":{"path":"/fathom-vm-oom","scope":"cgroup","limit_bytes":33554432,"usage_bytes":33554432},"oom_group":{"path":"/fathom-vm-oom","scope":"cgroup"},"oom_score_adj":0,"rss_bytes":{"anon":33423360,"file":0,"shmem":561152},"total_vm_bytes":34557952}"#;
    const SIBLING: &str = r#"{"time":"2026-11-26T18:09:11.71254692Z","kind":"oom_kill","victim":{"pid":164,"tgid":164,"comm":"sleep","cgroup_id":27,"cgroup_path":"/fathom-vm-oom"},"trigger":{"pid":165,"tgid":165,"comm":"alloc","cgroup_id":27},"memcg":{"path":"/fathom-vm-oom","id":27,"limit_bytes":33554432,"usage_bytes":33554432},"oom_domain":{"path":"/fathom-vm-oom","scope":"cgroup","limit_bytes":33554432,"usage_bytes":33554432},"oom_group":{"path":"/fathom-vm-oom","scope":"cgroup"},"oom_score_adj":0,"rss_bytes":{"anon":0,"file":0,"shmem":0},"total_vm_bytes":1000}"#;
    const DROP: &str = r#"{"time":"2026-11-26T18:09:12.488382015Z","kind":"packet_drop","reason":"NO_SOCKET","location":"__udp4_lib_rcv+0x235","netns":4026531840,"device":"lo","ifindex":1,"protocol":"ipv4","len":17,"packet":{"src":"127.0.0.1","dst":"127.0.0.1","protocol":"udp","src_port":39815,"dst_port":9}}"#;

    fn console(stderr: &[&str], stdout: &[&str], exit: i32) -> String {
        format!(
            "@@fathom-vm kernel 6.12.118+deb13-cloud-amd64\n@@fathom-vm btf yes\n\
             @@fathom-vm ready 2s\n\
             @@fathom-vm oom pid=165 cgroup_id=27 limit=33554432 rc=137 oom_kill=2 sibling=164\n\
             @@fathom-vm udp port=9 sent=5 netns=4026531840\n\
             @@fathom-vm begin stderr\n{}\nfathom: 2 events, 0 lost\n@@fathom-vm end stderr\n\
             @@fathom-vm begin stdout\n{}\n@@fathom-vm end stdout\n@@fathom-vm EXIT={exit}\n",
            stderr.join("\n"),
            stdout.join("\n")
        )
    }

    fn judged(console: String) -> KernelResult {
        let kernel = Kernel {
            label: "6.12".into(),
            vmlinuz: "/nonexistent".into(),
            package: None,
            cached: false,
        };
        let boot = Boot {
            console,
            elapsed: Duration::from_secs(12),
            end: End::Exited(ExitStatus::from_raw(0)),
        };
        judge(&kernel, &boot, &Scenario::default(), Path::new("x.log"))
    }

    #[test]
    fn events_with_the_right_values_pass() {
        let r = judged(console(
            &[ATTACHED, ATTACHED_DROPS],
            &[OOM, SIBLING, DROP],
            0,
        ));
        assert!(r.ok(), "{:?}", r.failures);
        assert_eq!((r.oom.status, r.drop.status), ("pass", "pass"));
        assert_eq!(r.drop.detail, "1/5 NO_SOCKET");
    }

    #[test]
    fn before_5_17_the_legacy_variant_reports_not_specified_drops() {
        let legacy = r#"{"timestamp":"2026-11-26T19:20:01.1Z","level":"INFO","fields":{"message":"attached; this kernel (< 5.17) passes no drop reasons: every drop is NOT_SPECIFIED, told apart by its call site","program":"skb_kfree_skb","variant":"skb_kfree_skb_legacy"},"target":"fathom::loader"}"#;
        let drop = DROP.replace("NO_SOCKET", "NOT_SPECIFIED");
        let r = judged(console(&[ATTACHED, legacy], &[OOM, SIBLING, &drop], 0));
        assert!(r.ok(), "{:?}", r.failures);
        assert_eq!(r.drop.detail, "1/5 NOT_SPECIFIED");
        // A NO_SOCKET event would mean the wrong program ran: not what this kernel gives.
        let r = judged(console(&[ATTACHED, legacy], &[OOM, SIBLING, DROP], 0));
        assert_eq!(r.drop.status, "fail");
    }

    #[test]
    fn a_stated_refusal_is_expected_a_verifier_rejection_fails() {
        let r = judged(console(&[ATTACHED, STATED], &[OOM, SIBLING], 0));
        assert!(r.ok(), "{:?}", r.failures);
        assert_eq!(r.drop.status, "n/a");
        assert!(r.programs[1].expected);

        let r = judged(console(&[ATTACHED, VERIFIER], &[OOM, SIBLING], 0));
        assert!(!r.ok());
        assert_eq!(
            r.failures,
            [
                "skb_kfree_skb refused: the BPF_PROG_LOAD syscall returned Permission denied \
              (os error 13) … func 'kfree_skb' doesn't have 3-th argument / invalid \
              bpf_context access off=16 size=8"
            ]
        );
    }

    #[test]
    fn missing_or_wrong_events_and_a_bad_exit_fail() {
        let r = judged(console(&[ATTACHED, ATTACHED_DROPS], &[DROP], 0));
        assert_eq!(r.oom.status, "fail");
        assert_eq!(r.oom.detail, "OOM kill of pid 165 not reported");

        // The group kill: the sibling's event missing, or the victim's without its group.
        let r = judged(console(&[ATTACHED, ATTACHED_DROPS], &[OOM, DROP], 0));
        assert_eq!(r.oom.status, "fail");
        assert_eq!(
            r.oom.detail,
            "OOM event wrong: no event for the group kill of sibling pid 164"
        );
        let ungrouped = OOM.replace(
            r#""oom_group":{"path":"/fathom-vm-oom","scope":"cgroup"},"#,
            "",
        );
        let r = judged(console(
            &[ATTACHED, ATTACHED_DROPS],
            &[&ungrouped, SIBLING, DROP],
            0,
        ));
        assert_eq!(
            r.oom.detail,
            r#"OOM event wrong: oom_group.path null (want "/fathom-vm-oom")"#
        );

        let wrong_ns = DROP.replace("4026531840", "0");
        let r = judged(console(
            &[ATTACHED, ATTACHED_DROPS],
            &[OOM, SIBLING, &wrong_ns],
            0,
        ));
        assert_eq!(r.drop.status, "fail");
        assert_eq!(r.drop.detail, "drop event wrong: netns 0 (want 4026531840)");

        let r = judged(console(
            &[ATTACHED, ATTACHED_DROPS],
            &[OOM, SIBLING, DROP],
            1,
        ));
        assert!(
            r.failures[0].starts_with("fathom exited with 1"),
            "{:?}",
            r.failures
        );
    }

    #[test]
    fn no_exit_line_is_a_failure_that_says_how_far_the_guest_got() {
        let r = judged("Booting from ROM...\n".into());
        assert!(!r.ok());
        assert!(r.failures[0].contains("before /init"), "{:?}", r.failures);
        assert!(
            r.failures[0].contains("Booting from ROM..."),
            "{:?}",
            r.failures
        );
    }
}
