//! Interpretation of OOM kills: cgroup paths, the memory cgroup with its limit and usage at
//! kill time, and the OOM domain (which cgroup's limit caused the kill).
//!
//! The OOM domain is not passed to `oom:mark_victim`; it is the `oom_control->memcg` whose
//! `page_counter_try_charge()` failed. That counter is the lowest cgroup, on the way from the
//! charging task's memcg to the root, whose usage plus the charge exceeded its max; the victim
//! is chosen inside it. So, walking the victim's memcg chain upwards, the domain is the first
//! cgroup with a limit and (almost) no headroom left at kill time. A kill with no such cgroup
//! is a host-wide (global) OOM.

use serde::Serialize;

use crate::{
    attribution::Workload,
    cgroup::{Resolver, path_from_leaf_first},
    clock::BootClock,
    container::{self, Scope},
    events::RawOomKill,
};

/// Headroom (in pages) under which a limited memcg counts as the one that was hit: the failed
/// charge is at most a THP (512 pages on x86-64) and usage moves a little between the failed
/// charge and `mark_victim` (per-CPU charge stocks of up to MEMCG_CHARGE_BATCH = 64 pages).
const DOMAIN_HEADROOM_PAGES: u64 = 512 + 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Victim {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Trigger {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Memcg {
    pub path: Option<String>,
    pub id: u64,
    /// `None` when the memcg has no limit.
    pub limit_bytes: Option<u64>,
    pub usage_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OomDomain {
    pub path: String,
    pub scope: Scope,
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
}

/// The cgroup of a group kill (`memory.oom.group`): the kernel killed every process in it
/// along with the chosen victim, each with an event of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OomGroup {
    pub path: String,
    pub scope: Scope,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rss {
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
}

/// One OOM kill, as printed by `fathom capture --output json` (see README, "JSON events").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OomKill {
    pub time: String,
    pub kind: &'static str,
    pub victim: Victim,
    pub trigger: Trigger,
    pub memcg: Option<Memcg>,
    pub oom_domain: OomDomain,
    /// Present when this kill was part of a group kill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_group: Option<OomGroup>,
    pub oom_score_adj: i32,
    pub rss_bytes: Rss,
    pub total_vm_bytes: u64,
    /// Container and pod (names filled in by the attribution layer when a runtime knows
    /// them): top-level `"container"` / `"pod"` keys, absent when unknown.
    #[serde(flatten)]
    pub workload: Workload,
    /// The victim memory cgroup's pressure just before the kill (filled in by the pipeline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pressure: Option<Box<crate::pressure::OomPressure>>,
    /// The cgroup path the workload was derived from (the v2 path, or the memcg path on hybrid
    /// hosts where the runtime only joined v1 controllers).
    #[serde(skip)]
    pub attribution_path: Option<String>,
}

/// Turns raw kernel records into [`OomKill`]s; owns the id → path fallbacks.
pub struct OomInterpreter {
    pub clock: BootClock,
    pub page_size: u64,
    /// Resolves cgroup v2 ids when the kernel chain was truncated.
    pub unified: Option<Resolver>,
    /// Resolves memory-cgroup ids when the kernel chain was truncated.
    pub memory: Option<Resolver>,
}

/// One level of the memcg chain with its path.
struct Level {
    path: String,
    id: u64,
    limit_bytes: Option<u64>,
    usage_bytes: u64,
    headroom_pages: Option<u64>,
    oom_group: bool,
}

impl OomInterpreter {
    pub fn new(
        clock: BootClock,
        page_size: u64,
        unified: Option<Resolver>,
        memory: Option<Resolver>,
    ) -> Self {
        Self {
            clock,
            page_size,
            unified,
            memory,
        }
    }

    /// `PAGE_COUNTER_MAX` (= LONG_MAX / PAGE_SIZE on 64-bit): "no limit".
    fn unlimited_pages(&self) -> u64 {
        i64::MAX as u64 / self.page_size
    }

    pub fn interpret(&mut self, k: &RawOomKill) -> OomKill {
        let victim_path = if k.cgroup_truncated {
            self.unified
                .as_mut()
                .and_then(|r| r.resolve(k.victim_cgroup_id))
        } else {
            Some(path_from_leaf_first(
                k.cgroup_chain.iter().map(|l| l.name.as_str()),
            ))
        };

        let levels = self.memcg_levels(k);
        let memcg = levels.first().map(|l| Memcg {
            path: Some(l.path.clone()),
            id: l.id,
            limit_bytes: l.limit_bytes,
            usage_bytes: l.usage_bytes,
        });
        let domain_level = levels
            .iter()
            .position(|l| l.headroom_pages.is_some_and(|h| h <= DOMAIN_HEADROOM_PAGES));
        // As mem_cgroup_get_oom_group(): the highest memcg from the victim's up to the OOM
        // domain (the whole chain for a host OOM) with memory.oom.group set.
        let group_levels = match domain_level {
            Some(d) => &levels[..=d],
            None => &levels[..],
        };
        let oom_group = group_levels
            .iter()
            .rev()
            .find(|l| l.oom_group)
            .map(|l| OomGroup {
                path: l.path.clone(),
                scope: container::scope_of(&l.path),
            });
        let domain = domain_level
            .map(|d| &levels[d])
            .map(|l| OomDomain {
                path: l.path.clone(),
                scope: container::scope_of(&l.path),
                limit_bytes: l.limit_bytes,
                usage_bytes: Some(l.usage_bytes),
            })
            .unwrap_or(OomDomain {
                path: "/".to_string(),
                scope: Scope::Host,
                limit_bytes: None,
                usage_bytes: None,
            });

        // Attribution: the v2 path when the victim sits below the v2 root, else (hybrid hosts
        // where runtimes only join v1 controllers) the memory cgroup's path.
        let attribution_path = match (&victim_path, &memcg) {
            (Some(p), _) if p != "/" => Some(p.clone()),
            (_, Some(m)) => m.path.clone(),
            _ => None,
        };
        let workload = attribution_path
            .as_deref()
            .map(Workload::from_path)
            .unwrap_or_default();

        let bytes = |pages: u64| pages.saturating_mul(self.page_size);
        OomKill {
            time: self.clock.to_timestamp(k.boot_ns).to_string(),
            kind: "oom_kill",
            victim: Victim {
                pid: k.victim_pid,
                tgid: k.victim_tgid,
                comm: k.victim_comm.clone(),
                cgroup_id: k.victim_cgroup_id,
                cgroup_path: victim_path,
            },
            trigger: Trigger {
                pid: k.trigger_pid,
                tgid: k.trigger_tgid,
                comm: k.trigger_comm.clone(),
                cgroup_id: k.trigger_cgroup_id,
            },
            memcg,
            oom_domain: domain,
            oom_group,
            oom_score_adj: k.oom_score_adj,
            rss_bytes: Rss {
                anon: bytes(k.rss_anon_pages),
                file: bytes(k.rss_file_pages),
                shmem: bytes(k.rss_shmem_pages),
            },
            total_vm_bytes: bytes(k.total_vm_pages),
            workload,
            pressure: None,
            attribution_path,
        }
    }

    /// The memcg chain leaf first with a path for each level; the root memcg is omitted
    /// (it has no limit and is "/").
    fn memcg_levels(&mut self, k: &RawOomKill) -> Vec<Level> {
        let chain = &k.memcg_chain;
        if chain.is_empty() {
            return Vec::new();
        }
        // Without truncation the last entry is the root memcg.
        let non_root = if k.memcg_truncated {
            chain.len()
        } else {
            chain.len() - 1
        };
        let leaf_path = if k.memcg_truncated {
            self.memory.as_mut().and_then(|r| r.resolve(chain[0].id))
        } else {
            Some(path_from_leaf_first(
                chain[..non_root].iter().map(|l| l.name.as_str()),
            ))
        };
        let Some(leaf_path) = leaf_path else {
            return Vec::new();
        };
        let unlimited = self.unlimited_pages();
        let mut path = leaf_path;
        let mut out = Vec::new();
        for l in &chain[..non_root] {
            let limited = l.max_pages < unlimited;
            out.push(Level {
                path: path.clone(),
                id: l.id,
                limit_bytes: limited.then(|| l.max_pages.saturating_mul(self.page_size)),
                usage_bytes: l.usage_pages.saturating_mul(self.page_size),
                headroom_pages: limited.then(|| l.max_pages.saturating_sub(l.usage_pages)),
                oom_group: l.oom_group,
            });
            path = parent_path(&path);
        }
        out
    }
}

fn parent_path(p: &str) -> String {
    match p.trim_end_matches('/').rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => p[..i].to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CgroupLevel, MemcgLevel};

    const PAGE: u64 = 4096;
    const UNLIMITED: u64 = i64::MAX as u64 / PAGE;
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn memcg(name: &str, id: u64, max: u64, usage: u64) -> MemcgLevel {
        MemcgLevel {
            id,
            name: name.into(),
            max_pages: max,
            usage_pages: usage,
            oom_group: false,
        }
    }

    fn raw(memcg_chain: Vec<MemcgLevel>, cgroup_chain: Vec<CgroupLevel>) -> RawOomKill {
        RawOomKill {
            boot_ns: 0,
            victim_pid: 10,
            victim_tgid: 10,
            victim_comm: "alloc".into(),
            trigger_pid: 10,
            trigger_tgid: 10,
            trigger_comm: "alloc".into(),
            victim_cgroup_id: 5,
            trigger_cgroup_id: 5,
            oom_score_adj: 0,
            has_mm: true,
            rss_anon_pages: 16000,
            rss_file_pages: 10,
            rss_shmem_pages: 0,
            total_vm_pages: 70000,
            cgroup_chain,
            cgroup_truncated: false,
            memcg_chain,
            memcg_truncated: false,
        }
    }

    fn interp() -> OomInterpreter {
        OomInterpreter::new(BootClock::new(), PAGE, None, None)
    }

    #[test]
    fn container_limit_is_the_domain() {
        let k = raw(
            vec![
                memcg(ID, 4, 8192, 8190),
                memcg("pod-x", 3, UNLIMITED, 9000),
                memcg("kubepods", 2, UNLIMITED, 9000),
                memcg("", 1, UNLIMITED, 1 << 20),
            ],
            vec![],
        );
        let e = interp().interpret(&k);
        let m = e.memcg.unwrap();
        assert_eq!(
            m.path.as_deref(),
            Some(format!("/kubepods/pod-x/{ID}").as_str())
        );
        assert_eq!(m.limit_bytes, Some(8192 * PAGE));
        assert_eq!(m.usage_bytes, 8190 * PAGE);
        assert_eq!(e.oom_domain.path, format!("/kubepods/pod-x/{ID}"));
        assert_eq!(e.oom_domain.scope, Scope::Container);
        assert_eq!(e.victim.cgroup_path.as_deref(), Some("/"));
        assert_eq!(e.rss_bytes.anon, 16000 * PAGE);
    }

    #[test]
    fn pod_limit_below_container_limit_is_the_domain() {
        let uid = "9c3f7e2a-41d5-4a6b-b0f2-8d1e5c7a3b90";
        let k = raw(
            vec![
                memcg(ID, 4, 16384, 12287),
                memcg(&format!("pod{uid}"), 3, 12288, 12287),
                memcg("burstable", 2, UNLIMITED, 20000),
                memcg("kubepods", 2, UNLIMITED, 20000),
                memcg("", 1, UNLIMITED, 1 << 20),
            ],
            vec![],
        );
        let e = interp().interpret(&k);
        assert_eq!(e.oom_domain.path, format!("/kubepods/burstable/pod{uid}"));
        assert_eq!(e.oom_domain.scope, Scope::Pod);
        assert_eq!(
            e.workload.pod.unwrap().qos,
            Some(crate::container::Qos::Burstable)
        );
        assert_eq!(e.workload.container.unwrap().id, ID);
    }

    fn grouped(mut l: MemcgLevel) -> MemcgLevel {
        l.oom_group = true;
        l
    }

    #[test]
    fn group_kill_is_the_highest_group_up_to_the_domain() {
        let uid = "9c3f7e2a-41d5-4a6b-b0f2-8d1e5c7a3b90";
        let pod = format!("pod{uid}");
        // Kubernetes ≥ 1.28 on cgroup v2: memory.oom.group on the container's cgroup.
        let k = raw(
            vec![
                grouped(memcg(ID, 4, 8192, 8190)),
                memcg(&pod, 3, UNLIMITED, 9000),
                memcg("kubepods", 2, UNLIMITED, 9000),
                memcg("", 1, UNLIMITED, 1 << 20),
            ],
            vec![],
        );
        let e = interp().interpret(&k);
        let g = e.oom_group.as_ref().unwrap();
        assert_eq!(g.path, format!("/kubepods/{pod}/{ID}"));
        assert_eq!(g.scope, Scope::Container);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["oom_group"]["scope"], "container");

        // A group above the OOM domain does not widen the kill (the kernel stops at the
        // domain); the highest group at or below it does.
        let k = raw(
            vec![
                grouped(memcg("worker", 5, UNLIMITED, 100)),
                grouped(memcg(ID, 4, 8192, 8190)),
                grouped(memcg(&pod, 3, UNLIMITED, 9000)),
                memcg("kubepods", 2, UNLIMITED, 9000),
                memcg("", 1, UNLIMITED, 1 << 20),
            ],
            vec![],
        );
        let e = interp().interpret(&k);
        assert_eq!(e.oom_group.unwrap().path, format!("/kubepods/{pod}/{ID}"));

        // No group flag: no group, and no key in the JSON.
        let k = raw(
            vec![memcg(ID, 4, 8192, 8190), memcg("", 1, UNLIMITED, 1 << 20)],
            vec![],
        );
        let e = interp().interpret(&k);
        assert!(e.oom_group.is_none());
        assert!(serde_json::to_value(&e).unwrap().get("oom_group").is_none());
    }

    #[test]
    fn a_host_oom_kills_the_highest_group_of_the_whole_chain() {
        let k = raw(
            vec![
                grouped(memcg("app", 3, UNLIMITED, 9000)),
                grouped(memcg("apps", 2, UNLIMITED, 9000)),
                memcg("", 1, UNLIMITED, 1 << 20),
            ],
            vec![],
        );
        let e = interp().interpret(&k);
        assert_eq!(e.oom_domain.scope, Scope::Host);
        assert_eq!(e.oom_group.unwrap().path, "/apps");
    }

    #[test]
    fn no_limit_hit_is_a_host_oom() {
        let k = raw(
            vec![
                memcg("app", 3, UNLIMITED, 9000),
                memcg("", 1, UNLIMITED, 1 << 20),
            ],
            vec![CgroupLevel {
                id: 5,
                name: "app".into(),
            }],
        );
        let e = interp().interpret(&k);
        assert_eq!(e.oom_domain.scope, Scope::Host);
        assert_eq!(e.oom_domain.path, "/");
        assert_eq!(e.memcg.unwrap().limit_bytes, None);
        assert_eq!(e.victim.cgroup_path.as_deref(), Some("/app"));
    }

    #[test]
    fn plain_cgroup_scope_and_json_shape() {
        let k = raw(
            vec![
                memcg("job", 3, 16384, 16384),
                memcg("batch", 2, UNLIMITED, 16384),
                memcg("", 1, UNLIMITED, 1 << 20),
            ],
            vec![],
        );
        let e = interp().interpret(&k);
        assert_eq!(e.oom_domain.scope, Scope::Cgroup);
        let v = serde_json::to_value(&e).unwrap();
        for key in [
            "time",
            "kind",
            "victim",
            "trigger",
            "memcg",
            "oom_domain",
            "oom_score_adj",
            "rss_bytes",
            "total_vm_bytes",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["kind"], "oom_kill");
        assert_eq!(v["memcg"]["path"], "/batch/job");
        assert_eq!(v["oom_domain"]["scope"], "cgroup");
        assert_eq!(v["victim"]["cgroup_path"], "/");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(v.get("pod").is_none());
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("/a/b/c"), "/a/b");
        assert_eq!(parent_path("/a"), "/");
        assert_eq!(parent_path("/"), "/");
    }
}
