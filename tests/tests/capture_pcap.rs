//! `fathom capture --pcap`: the dropped packets as pcapng, checked with an independent reader
//! (tcpdump) for the bytes and timestamps, and with pcap-file for the per-packet comments.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use fathom_tests::{
    FathomCapture, NetNs, READY_MARKER, TempDir, fathom::fathom_bin, require_root,
    traffic::udp_send, wait_until,
};
use pcap_file::{
    DataLink,
    pcapng::{
        Block, PcapNgReader,
        blocks::{
            enhanced_packet::EnhancedPacketOption,
            interface_description::InterfaceDescriptionOption,
        },
    },
};

const READY: Duration = Duration::from_secs(30);

/// One UDP datagram per (port, payload size), sent from inside `ns` to a closed port on its
/// loopback: each is a NO_SOCKET drop in that namespace.
fn send_to_closed_ports(ns: &NetNs, sent: &[(u16, usize)]) {
    for &(port, size) in sent {
        udp_send(ns, &format!("127.0.0.1:{port}"), size, 1, None);
    }
}

/// `tcpdump -r FILE` lines as (epoch seconds, destination port, UDP payload length).
fn tcpdump_udp(file: &Path) -> Vec<(f64, u16, usize)> {
    let out = Command::new("tcpdump")
        .args(["-nn", "-tt", "-r"])
        .arg(file)
        .output()
        .expect("tcpdump (installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "tcpdump cannot read {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(|l| {
            // 1764170000.123456789 IP 127.0.0.1.41234 > 127.0.0.1.40001: UDP, length 100
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 8 && f[1] == "IP", "unexpected tcpdump line: {l}");
            let port = f[4].trim_end_matches(':').rsplit('.').next().unwrap();
            (
                f[0].parse().unwrap(),
                port.parse().unwrap(),
                f[f.len() - 1].parse().unwrap(),
            )
        })
        .collect()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn dropped_packets_are_written_as_pcapng_with_reason_and_namespace() {
    require_root!();
    let ns = NetNs::new();
    ns.lo_up();
    let dir = TempDir::new("fathom-pcap-").unwrap();
    let file = dir.path().join("drops.pcapng");
    let netns_path = ns.path();
    let mut fathom = FathomCapture::start(&[
        "--kind",
        "drop",
        "--reason",
        "NO_SOCKET",
        "--netns",
        netns_path.to_str().unwrap(),
        "--pcap",
        file.to_str().unwrap(),
    ]);
    fathom.wait_ready(READY);
    let t0 = now_secs();
    let sent = [
        (40001, 100),
        (40002, 7),
        (40003, 1400),
        (40004, 64),
        (40005, 0),
    ];
    send_to_closed_ports(&ns, &sent);
    let t1 = now_secs();
    let mut seen = 0;
    let events = fathom.events_until(Duration::from_secs(10), |_| {
        seen += 1;
        seen == sent.len()
    });
    assert_eq!(events.len(), sent.len(), "events: {events:?}");
    assert!(fathom.stop().success(), "{}", fathom.stderr());
    assert!(
        fathom
            .stderr()
            .contains(&format!("{} packets written to", sent.len())),
        "{}",
        fathom.stderr()
    );
    // Nothing of other namespaces (the filter), every event ours.
    assert!(
        events.iter().all(|v| v["netns"] == ns.inode()),
        "{events:?}"
    );

    // An independent reader: the packets' own bytes, in order, at the right time.
    let read = tcpdump_udp(&file);
    let want: Vec<(u16, usize)> = sent.to_vec();
    let got: Vec<(u16, usize)> = read.iter().map(|&(_, p, n)| (p, n)).collect();
    assert_eq!(got, want, "tcpdump read {read:?}");
    for &(t, _, _) in &read {
        assert!(
            t >= t0 - 1.0 && t <= t1 + 1.0,
            "timestamp {t} outside [{t0}, {t1}] (tsresol not honoured?)"
        );
    }

    // The pcapng structure: raw IP, nanosecond stamps, one interface for the namespace's lo,
    // and a comment per packet saying why and where.
    let bytes = std::fs::read(&file).unwrap();
    let mut r = PcapNgReader::new(&bytes[..]).unwrap();
    let (mut ifaces, mut comments) = (Vec::new(), Vec::new());
    while let Some(b) = r.next_block() {
        match b.unwrap() {
            Block::InterfaceDescription(i) => ifaces.push(i.into_owned()),
            Block::EnhancedPacket(p) => {
                assert_eq!(p.interface_id, 0);
                for o in &p.options {
                    if let EnhancedPacketOption::Comment(c) = o {
                        comments.push(c.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(ifaces.len(), 1, "{ifaces:?}");
    assert_eq!(ifaces[0].linktype, DataLink::RAW);
    assert!(
        ifaces[0]
            .options
            .contains(&InterfaceDescriptionOption::IfName("lo".into())),
        "{:?}",
        ifaces[0].options
    );
    assert!(
        ifaces[0]
            .options
            .contains(&InterfaceDescriptionOption::IfDescription(
                format!("netns {} ifindex 1", ns.inode()).into()
            ))
    );
    assert_eq!(comments.len(), sent.len());
    for c in &comments {
        assert!(
            c.starts_with("packet_drop reason=NO_SOCKET at=")
                && c.contains(&format!(" netns={} dev=lo", ns.inode())),
            "{c}"
        );
    }
}

#[test]
fn pcap_to_stdout_streams_while_events_go_to_stderr() {
    require_root!();
    let ns = NetNs::new();
    ns.lo_up();
    let dir = TempDir::new("fathom-pcap-").unwrap();
    let (pcap, log) = (dir.path().join("stdout.pcapng"), dir.path().join("stderr"));
    let mut child = Command::new(fathom_bin())
        .args([
            "capture",
            "--output",
            "json",
            "--reason",
            "NO_SOCKET",
            "--count",
            "3",
        ])
        .args(["--pcap", "-", "--netns", &ns.inode().to_string()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&pcap).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = wait_until(READY, Duration::from_millis(50), || {
        stderr().contains(READY_MARKER) || matches!(child.try_wait(), Ok(Some(_)))
    });
    assert!(ready && stderr().contains(READY_MARKER), "{}", stderr());

    let sent = [(40011, 11), (40012, 22), (40013, 33)];
    send_to_closed_ports(&ns, &sent);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("--count 3 did not end the capture; stderr:\n{}", stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", stderr());
    let got: Vec<(u16, usize)> = tcpdump_udp(&pcap)
        .into_iter()
        .map(|(_, p, n)| (p, n))
        .collect();
    assert_eq!(got, sent.to_vec());
    // The events themselves went to stderr, as JSON lines.
    let events: Vec<serde_json::Value> = stderr()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(events.len(), 3, "{}", stderr());
    assert!(events.iter().all(|e| e["reason"] == "NO_SOCKET"));
}
