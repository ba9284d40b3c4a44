//! What `fathom capture` watches, said once at start (on stderr, after the ready line), so an
//! idle host shows something: the network namespaces and VXLAN devices the topology found,
//! with their MTU verdicts, and the containers and pods the attribution's process scan found,
//! with how many have a memory limit.

use std::collections::BTreeSet;

use crate::{attribution::Attributor, cgroup::Hierarchies, container, net::TopologySnapshot};

/// Mismatches named in full; the rest are counted.
const NAMED_MISMATCHES: usize = 3;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// `None` without a network topology (it could not start).
    pub netns: Option<usize>,
    pub vxlans: usize,
    /// "device (netns N): MTU m > max via underlay", one per mismatched device and underlay.
    pub mismatches: Vec<String>,
    pub containers: usize,
    pub with_limit: usize,
    pub pods: usize,
}

impl Inventory {
    /// Reads it from the topology snapshot and the attribution's last scan (run now).
    pub async fn gather(topology: Option<&TopologySnapshot>, attributor: &Attributor) -> Self {
        attributor.rescan().await;
        let paths = attributor.container_cgroups();
        let memory = Hierarchies::detect().memory;
        let with_limit = memory.as_deref().map_or(0, |root| {
            let v2 = crate::pressure::files::is_v2(root);
            paths
                .iter()
                .filter(|p| {
                    crate::pressure::files::CgroupDirs::of_layout(p, root, v2, None)
                        .limit_bytes()
                        .is_some()
                })
                .count()
        });
        let pods: BTreeSet<String> = paths
            .iter()
            .filter_map(|p| container::parse(p).pod.map(|p| p.uid))
            .collect();
        Inventory {
            netns: topology.map(|t| t.netns.len()),
            vxlans: topology.map_or(0, |t| t.vxlans.len()),
            mismatches: topology.map_or_else(Vec::new, |t| {
                t.mismatches
                    .iter()
                    .map(|m| {
                        format!(
                            "{} (netns {}): MTU {} > {} via {}",
                            m.device, m.netns, m.mtu, m.max_mtu, m.underlay
                        )
                    })
                    .collect()
            }),
            containers: paths.len(),
            with_limit,
            pods: pods.len(),
        }
    }

    /// One line: `fathom: watching …`, or that there is nothing to watch yet.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        match self.netns {
            Some(n) => parts.push(plural(n, "network namespace", "network namespaces")),
            None => parts.push("no network topology".to_string()),
        }
        let mut vx = plural(self.vxlans, "VXLAN device", "VXLAN devices");
        if !self.mismatches.is_empty() {
            let named: Vec<&str> = self
                .mismatches
                .iter()
                .take(NAMED_MISMATCHES)
                .map(String::as_str)
                .collect();
            let more = self.mismatches.len().saturating_sub(NAMED_MISMATCHES);
            vx += &format!(
                " ({} MTU mismatch{}: {}{})",
                self.mismatches.len(),
                if self.mismatches.len() == 1 { "" } else { "es" },
                named.join("; "),
                if more > 0 {
                    format!("; {more} more")
                } else {
                    String::new()
                }
            );
        } else if self.vxlans > 0 {
            vx += " (MTUs fit)";
        }
        parts.push(vx);
        parts.push(format!(
            "{} ({} with a memory limit) in {}",
            plural(self.containers, "container", "containers"),
            self.with_limit,
            plural(self.pods, "pod", "pods")
        ));
        let quiet = self.containers == 0 && self.vxlans == 0;
        format!(
            "fathom: watching {}{}",
            parts.join(", "),
            if quiet {
                "; nothing containerised here yet: OOM kills and drops of the host show as they happen"
            } else {
                ""
            }
        )
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_it_watches_and_names_mismatches() {
        let i = Inventory {
            netns: Some(12),
            vxlans: 2,
            mismatches: vec!["vx0 (netns 7): MTU 1500 > 1450 via eth0".into()],
            containers: 5,
            with_limit: 3,
            pods: 1,
        };
        assert_eq!(
            i.line(),
            "fathom: watching 12 network namespaces, 2 VXLAN devices (1 MTU mismatch: vx0 (netns 7): MTU 1500 > 1450 via eth0), 5 containers (3 with a memory limit) in 1 pod"
        );
    }

    #[test]
    fn an_idle_host_is_said_to_be_one() {
        let i = Inventory {
            netns: Some(1),
            ..Inventory::default()
        };
        let l = i.line();
        assert!(l.starts_with("fathom: watching 1 network namespace, 0 VXLAN devices, 0 containers (0 with a memory limit) in 0 pods; nothing containerised"), "{l}");
    }

    #[test]
    fn many_mismatches_are_counted_past_three() {
        let i = Inventory {
            netns: Some(3),
            vxlans: 5,
            mismatches: (0..5).map(|d| format!("vx{d}")).collect(),
            ..Inventory::default()
        };
        assert!(
            i.line()
                .contains("(5 MTU mismatches: vx0; vx1; vx2; 2 more)"),
            "{}",
            i.line()
        );
    }
}
