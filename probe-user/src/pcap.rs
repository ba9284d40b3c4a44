//! `fathom capture --pcap FILE`: the sampled dropped packets as pcapng, readable by Wireshark,
//! tshark and tcpdump.
//!
//! Every packet is an Enhanced Packet Block whose bytes start at the network header
//! (LINKTYPE_RAW: IPv4 or IPv6, told apart by the version nibble) and whose comment says why
//! and where the kernel dropped it and whom it belonged to (Wireshark shows it as
//! `frame.comment`, e.g. filter `frame.comment contains "NO_SOCKET"`). Each network namespace
//! and device pair gets its own interface (name = device, description = namespace), so
//! Wireshark's interface column separates the pods. Blocks are flushed as they are written: a
//! capture ended by Ctrl-C leaves a complete file, and a live reader (`--pcap -`) sees each
//! packet at once.

use std::{borrow::Cow, collections::HashMap, io::Write, time::Duration};

use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
    },
};
use probe_common::net::DROP_SNAP_LEN;

use crate::netreport::PacketDrop;

/// pcap-file writes Enhanced Packet Block timestamps in nanoseconds: say so in every
/// interface (`if_tsresol` = 10^-9), or readers would take them for microseconds.
const TSRESOL_NANOS: u8 = 9;

/// Writes dropped packets as pcapng.
pub struct PcapWriter<W: Write> {
    writer: PcapNgWriter<W>,
    /// (netns, ifindex) → interface id.
    interfaces: HashMap<(u32, u32), u32>,
    written: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the section header.
    pub fn new(out: W) -> std::io::Result<Self> {
        let section = SectionHeaderBlock {
            options: vec![
                SectionHeaderOption::UserApplication(Cow::Owned(format!(
                    "fathom {}",
                    env!("CARGO_PKG_VERSION")
                ))),
                SectionHeaderOption::OS(Cow::Owned(os_name())),
                SectionHeaderOption::Comment(Cow::Borrowed(
                    "packets dropped by the kernel, sampled by fathom (rate-limited; the \
                     in-kernel counts are exact)",
                )),
            ],
            ..Default::default()
        };
        let mut writer = PcapNgWriter::with_section_header(out, section).map_err(io_err)?;
        writer.get_mut().flush()?;
        Ok(Self {
            writer,
            interfaces: HashMap::new(),
            written: 0,
        })
    }

    /// Packets written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes one dropped packet (and its interface, the first time it is seen).
    pub fn write(&mut self, d: &PacketDrop) -> std::io::Result<()> {
        let next_id = self.interfaces.len() as u32;
        let interface_id = match self.interfaces.get(&(d.netns, d.ifindex)) {
            Some(&id) => id,
            None => {
                self.writer
                    .write_pcapng_block(interface_block(d))
                    .map_err(io_err)?;
                self.interfaces.insert((d.netns, d.ifindex), next_id);
                next_id
            }
        };
        let nanos = d.timestamp.as_nanosecond().max(0) as u64;
        let block = EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::from_nanos(nanos),
            original_len: original_len(&d.raw, d.len),
            data: Cow::Borrowed(&d.raw),
            options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment(d)))],
        };
        self.writer.write_pcapng_block(block).map_err(io_err)?;
        self.writer.get_mut().flush()?;
        self.written += 1;
        Ok(())
    }
}

fn io_err(e: pcap_file::PcapError) -> std::io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => std::io::Error::other(other),
    }
}

fn os_name() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("Linux {}", release.trim())
}

fn interface_block(d: &PacketDrop) -> InterfaceDescriptionBlock<'static> {
    let name = match (&d.device, d.ifindex) {
        (Some(dev), _) => dev.clone(),
        (None, 0) => "-".to_string(),
        (None, i) => format!("if{i}"),
    };
    InterfaceDescriptionBlock {
        linktype: DataLink::RAW,
        snaplen: DROP_SNAP_LEN as u32,
        options: vec![
            InterfaceDescriptionOption::IfName(Cow::Owned(name)),
            InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                "netns {} ifindex {}",
                d.netns, d.ifindex
            ))),
            InterfaceDescriptionOption::IfTsResol(TSRESOL_NANOS),
        ],
    }
}

/// The packet's length on the wire from the network header on: the IP header's own length
/// when the snapshot holds it (`skb->len` may count from a later header: a UDP packet
/// dropped for NO_SOCKET has had its IP header pulled), else the larger of the two.
pub fn original_len(raw: &[u8], skb_len: u32) -> u32 {
    let captured = raw.len() as u32;
    let from_header = match raw.first().map(|b| b >> 4) {
        Some(4) if raw.len() >= 4 => Some(u16::from_be_bytes([raw[2], raw[3]]) as u32),
        Some(6) if raw.len() >= 6 => Some(40 + u16::from_be_bytes([raw[4], raw[5]]) as u32),
        _ => None,
    };
    match from_header {
        Some(n) if n >= captured => n,
        _ => skb_len.max(captured),
    }
}

/// `packet_drop reason=NO_SOCKET at=__udp4_lib_rcv+0x… netns=4026532177 dev=veth0
/// pod=shop/cart-7d9 container=cart`.
pub fn comment(d: &PacketDrop) -> String {
    let mut c = format!("{} reason={}", d.kind, d.reason);
    if let Some(cause) = d.cause {
        c.push_str(&format!(" cause={cause}"));
    }
    if let Some(loc) = &d.location {
        c.push_str(&format!(" at={loc}"));
    }
    c.push_str(&format!(" netns={}", d.netns));
    if let Some(dev) = &d.device {
        c.push_str(&format!(" dev={dev}"));
    }
    if let Some(pod) = &d.workload.pod {
        match (&pod.namespace, &pod.name) {
            (Some(ns), Some(n)) => c.push_str(&format!(" pod={ns}/{n}")),
            _ => {
                if let Some(uid) = &pod.uid {
                    c.push_str(&format!(" pod_uid={uid}"));
                }
            }
        }
    }
    if let Some(ctr) = &d.workload.container {
        match &ctr.name {
            Some(n) => c.push_str(&format!(" container={n}")),
            None => c.push_str(&format!(" container_id={}", ctr.id)),
        }
    }
    if let Some(id) = d.socket_cgroup_id {
        c.push_str(&format!(" socket_cgroup_id={id}"));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader};

    fn udp_v4(dst_port: u16, payload: usize) -> Vec<u8> {
        let total = 20 + 8 + payload;
        let mut p = vec![0u8; total.min(DROP_SNAP_LEN)];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&dst_port.to_be_bytes());
        p
    }

    fn drop_of(raw: Vec<u8>, netns: u32, ifindex: u32) -> PacketDrop {
        PacketDrop {
            time: String::new(),
            kind: "packet_drop",
            reason: "NO_SOCKET".into(),
            cause: None,
            location: Some("__udp4_lib_rcv+0x5e".into()),
            netns,
            device: (ifindex != 0).then(|| "veth0".to_string()),
            ifindex,
            protocol: "ipv4".into(),
            len: 8,
            packet: None,
            socket_cgroup_id: None,
            vxlan_device: None,
            workload: Default::default(),
            timestamp: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            raw: raw.into(),
        }
    }

    #[test]
    fn original_length_comes_from_the_ip_header() {
        assert_eq!(original_len(&udp_v4(9, 1000), 1008), 1028);
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&1200u16.to_be_bytes());
        assert_eq!(original_len(&v6, 1200), 1240);
        // Garbage or nothing: at least what was captured.
        assert_eq!(original_len(&[0xff; 10], 3), 10);
        assert_eq!(original_len(&[], 77), 77);
        // A header claiming less than was captured is not believed.
        let mut short = udp_v4(9, 100);
        short[2..4].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(original_len(&short, 0), short.len() as u32);
    }

    #[test]
    fn comment_names_reason_place_and_owner() {
        let mut d = drop_of(udp_v4(9, 10), 4026532177, 3);
        assert_eq!(
            comment(&d),
            "packet_drop reason=NO_SOCKET at=__udp4_lib_rcv+0x5e netns=4026532177 dev=veth0"
        );
        d.workload.pod = Some(crate::attribution::PodInfo {
            uid: Some("1234".into()),
            name: Some("cart".into()),
            namespace: Some("shop".into()),
            qos: None,
        });
        d.socket_cgroup_id = Some(77);
        let c = comment(&d);
        assert!(c.ends_with(" pod=shop/cart socket_cgroup_id=77"), "{c}");
    }

    #[test]
    fn file_round_trips_with_one_interface_per_namespace_and_device() {
        let mut out = Vec::new();
        let mut w = PcapWriter::new(&mut out).unwrap();
        w.write(&drop_of(udp_v4(9, 10), 1, 3)).unwrap();
        w.write(&drop_of(udp_v4(10, 2000), 2, 3)).unwrap();
        w.write(&drop_of(udp_v4(11, 10), 1, 3)).unwrap();
        w.write(&drop_of(Vec::new(), 1, 0)).unwrap();
        assert_eq!(w.written(), 4);

        let mut r = PcapNgReader::new(&out[..]).unwrap();
        let (mut ifaces, mut packets) = (Vec::new(), Vec::new());
        while let Some(b) = r.next_block() {
            match b.unwrap() {
                Block::InterfaceDescription(i) => ifaces.push(i.into_owned()),
                Block::EnhancedPacket(p) => packets.push(p.into_owned()),
                _ => {}
            }
        }
        assert_eq!(ifaces.len(), 3, "(1,3), (2,3), (1,0)");
        assert!(ifaces.iter().all(|i| {
            i.linktype == DataLink::RAW
                && i.options
                    .contains(&InterfaceDescriptionOption::IfTsResol(TSRESOL_NANOS))
        }));
        let ids: Vec<u32> = packets.iter().map(|p| p.interface_id).collect();
        assert_eq!(ids, [0, 1, 0, 2]);
        assert_eq!(packets[1].original_len, 2028);
        assert_eq!(packets[1].data.len(), DROP_SNAP_LEN);
        assert_eq!(packets[0].data[23], 9);
        assert_eq!(packets[0].timestamp, Duration::from_secs(1_800_000_000));
        assert!(matches!(
            &packets[2].options[0],
            EnhancedPacketOption::Comment(c) if c.contains("reason=NO_SOCKET")
        ));
    }
}
