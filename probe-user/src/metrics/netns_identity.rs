//! Which network namespace a kernel key belongs to when inodes are reused.
//!
//! The kernel reuses a gone namespace's inode number within seconds (the proc inode IDA hands
//! out the lowest free number). Every drop and expiry key therefore also carries the
//! namespace's cookie (`net->net_cookie`, Linux ≥ 5.14), which is never reused — but cookies
//! are **not ordered**: `gen_cookie_next()` (include/linux/cookie.h) hands them out from
//! per-CPU batches of 4,096, so a namespace created later on another CPU can have a smaller
//! cookie (seen on 6.18: 86, 4171, 4173, 88, 4175 for five namespaces made in a row). The
//! order that holds is the order of appearance, and the topology's word: it lists the
//! namespace that holds an inode now, with its cookie (read when fathom first entered it; its
//! open fd pins that namespace, so no other one can take the inode while it is listed).
//!
//! So, per inode: the **holder** is the cookie the topology lists, else the cookie that
//! appeared last; every other cookie seen under the inode is **retired** (a namespace that
//! held it before). Keys of retired cookies are left out of the series and deleted from the
//! maps; a cookie never comes back. Keys with cookie 0 (kernels without cookies) are taken
//! as they are.
//!
//! And which namespaces are **gone**: listed by the topology before and not any more, or
//! listed now with another cookie. Their keys are deleted after the scrape that read them,
//! by (inode, cookie), so a new namespace that already reuses the inode keeps its counts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::netns_labels::ListedNetns;

/// Retired cookies remembered per inode (a pod churning on one inode retires one per life).
const RETIRED_PER_INODE: usize = 16;

/// A gone namespace whose kernel keys are to be deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gone {
    pub netns: u32,
    /// Its cookie; `None` when unknown (then every key of the inode goes).
    pub cookie: Option<u64>,
    /// No namespace holds the inode now: keys without a cookie (VXLAN devices) can go too.
    pub inode_free: bool,
}

#[derive(Debug, Default)]
struct Holders {
    /// The cookie of the namespace that holds the inode (0: none seen yet).
    current: u64,
    /// Cookies of namespaces that held it before, oldest first.
    retired: Vec<u64>,
}

impl Holders {
    fn retire(&mut self, cookie: u64) {
        if cookie == 0 || self.retired.contains(&cookie) {
            return;
        }
        if self.retired.len() == RETIRED_PER_INODE {
            self.retired.remove(0);
        }
        self.retired.push(cookie);
    }
}

/// What one reading of the maps changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Inodes that passed to another namespace: their series are removed now (Prometheus
    /// sees a counter reset, not a gone pod's counts continuing).
    pub reused: Vec<u32>,
    /// Namespaces retired by this reading whose keys are still in the maps.
    pub retired: Vec<Gone>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct NetnsIdentity {
    holders: HashMap<u32, Holders>,
    /// Inode → cookie of every namespace the topology has listed (cookie `None` while unknown).
    listed_before: BTreeMap<u32, Option<u64>>,
}

impl NetnsIdentity {
    /// Takes one reading's (inode, cookie) pairs (cookie 0 pairs are ignored) and the
    /// topology's listing.
    pub fn observe(
        &mut self,
        keys: impl IntoIterator<Item = (u32, u64)>,
        listed: &ListedNetns,
    ) -> Observed {
        let mut present: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        for (ns, cookie) in keys {
            if cookie != 0 {
                present.entry(ns).or_default().insert(cookie);
            }
        }
        let mut out = Observed::default();
        for (ns, cookies) in present {
            let h = self.holders.entry(ns).or_default();
            let fresh: Vec<u64> = cookies
                .iter()
                .copied()
                .filter(|c| *c != h.current && !h.retired.contains(c))
                .collect();
            // Several unknown cookies at once and no word from the topology: their order
            // cannot be known; the largest is taken.
            let holder = listed
                .cookie(ns)
                .filter(|c| *c != 0)
                .or_else(|| fresh.last().copied())
                .unwrap_or(h.current);
            if holder != h.current {
                if h.current != 0 {
                    let old = h.current;
                    h.retire(old);
                    out.reused.push(ns);
                }
                h.retired.retain(|c| *c != holder);
                h.current = holder;
            }
            for c in fresh.iter().copied().filter(|c| *c != holder) {
                h.retire(c);
            }
            // Every retired cookie still in the maps goes (again, for one retired earlier: a
            // per-CPU last-key slot flushes a gone namespace's key back into `DROPS` when its
            // CPU next drops).
            for &c in cookies.iter().filter(|c| h.retired.contains(c)) {
                out.retired.push(Gone {
                    netns: ns,
                    cookie: Some(c),
                    inode_free: false,
                });
            }
        }
        out
    }

    /// Whether a key of (inode, cookie) counts: cookie 0, or the inode's holder.
    pub fn keeps(&self, netns: u32, cookie: u64) -> bool {
        cookie == 0
            || self
                .holders
                .get(&netns)
                .is_none_or(|h| !h.retired.contains(&cookie))
    }

    /// Whether the topology has listed the inode (under any cookie) and [`Self::gone`] has not
    /// yet found that namespace gone.
    pub fn was_listed(&self, netns: u32) -> bool {
        self.listed_before.contains_key(&netns)
    }

    /// Namespaces the topology listed before that are gone now (not listed, or listed with
    /// another cookie); remembers the current listing. Their cookies are retired.
    pub fn gone(&mut self, listed: &ListedNetns) -> Vec<Gone> {
        let mut out = Vec::new();
        self.listed_before.retain(|&ns, cookie| {
            let now = listed.lists(ns);
            let other =
                now && cookie.is_some() && listed.cookie(ns).is_some_and(|c| Some(c) != *cookie);
            if now && !other {
                return true;
            }
            out.push(Gone {
                netns: ns,
                cookie: *cookie,
                inode_free: !now,
            });
            false
        });
        for g in &out {
            if let Some(c) = g.cookie {
                self.holders.entry(g.netns).or_default().retire(c);
            }
        }
        for ns in listed.listed() {
            let cookie = listed.cookie(ns);
            let e = self.listed_before.entry(ns).or_insert(cookie);
            if e.is_none() {
                *e = cookie;
            }
        }
        out
    }

    /// The cookie holding `netns` as far as the maps showed (`None` before any keyed count).
    pub fn holder(&self, netns: u32) -> Option<u64> {
        self.holders
            .get(&netns)
            .map(|h| h.current)
            .filter(|c| *c != 0)
    }

    /// Retires the holder of a namespace found gone without ever being listed.
    pub fn retire_holder(&mut self, netns: u32) -> Option<u64> {
        let h = self.holders.get_mut(&netns)?;
        let c = h.current;
        h.retire(c);
        (c != 0).then_some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{TopologySnapshot, netns::NetnsInfo};

    fn listing(ns: &[(u32, Option<u64>)]) -> TopologySnapshot {
        TopologySnapshot {
            generation: 1,
            netns: ns
                .iter()
                .map(|&(inode, cookie)| NetnsInfo {
                    inode,
                    cookie,
                    is_host: false,
                    names: vec![],
                    bind_mounts: vec![],
                    pids: vec![],
                })
                .collect(),
            ..TopologySnapshot::default()
        }
    }

    #[test]
    fn a_later_cookie_takes_the_inode_even_when_it_is_smaller() {
        let mut id = NetnsIdentity::default();
        let none = ListedNetns::new(None);
        assert_eq!(id.observe([(7, 4171)], &none), Observed::default());
        assert!(id.keeps(7, 4171));
        // The kernel's next namespace on the other CPU: a smaller cookie, same inode.
        let o = id.observe([(7, 4171), (7, 88)], &none);
        assert_eq!(o.reused, vec![7]);
        assert_eq!(
            o.retired,
            vec![Gone {
                netns: 7,
                cookie: Some(4171),
                inode_free: false
            }]
        );
        assert!(id.keeps(7, 88));
        assert!(!id.keeps(7, 4171));
        assert_eq!(id.holder(7), Some(88));
        // The old cookie never comes back (a per-CPU slot flushing late): its keys are
        // deleted again whenever they show up.
        let o = id.observe([(7, 4171), (7, 88)], &none);
        assert!(o.reused.is_empty());
        assert_eq!(
            o.retired,
            vec![Gone {
                netns: 7,
                cookie: Some(4171),
                inode_free: false
            }]
        );
        assert!(!id.keeps(7, 4171));
        assert_eq!(id.observe([(7, 88)], &none), Observed::default());
        // Cookie 0 (no cookies in this kernel) is always kept.
        assert!(id.keeps(7, 0));
    }

    #[test]
    fn the_topology_names_the_holder() {
        let mut id = NetnsIdentity::default();
        // Both cookies show up in one reading; the topology lists 50 as the holder.
        let snap = listing(&[(9, Some(50))]);
        let listed = ListedNetns::new(Some(&snap));
        let o = id.observe([(9, 60), (9, 50)], &listed);
        assert!(o.reused.is_empty());
        assert_eq!(
            o.retired,
            vec![Gone {
                netns: 9,
                cookie: Some(60),
                inode_free: false
            }]
        );
        assert!(id.keeps(9, 50) && !id.keeps(9, 60));
        // The holder the maps showed is replaced as soon as the topology lists another.
        let snap = listing(&[(9, Some(70))]);
        let listed = ListedNetns::new(Some(&snap));
        let o = id.observe([(9, 50)], &listed);
        assert_eq!(o.reused, vec![9]);
        assert!(!id.keeps(9, 50));
    }

    #[test]
    fn gone_is_by_cookie_so_a_new_holder_keeps_its_keys() {
        let mut id = NetnsIdentity::default();
        let a = listing(&[(5, Some(1)), (6, None)]);
        assert!(id.gone(&ListedNetns::new(Some(&a))).is_empty());
        assert!(id.was_listed(5));
        // Inode 5 now listed with another cookie, 6 not listed at all.
        let b = listing(&[(5, Some(4097))]);
        let mut g = id.gone(&ListedNetns::new(Some(&b)));
        g.sort();
        assert_eq!(
            g,
            vec![
                Gone {
                    netns: 5,
                    cookie: Some(1),
                    inode_free: false
                },
                Gone {
                    netns: 6,
                    cookie: None,
                    inode_free: true
                },
            ]
        );
        assert!(!id.keeps(5, 1));
        assert!(id.keeps(5, 4097));
        assert!(!id.was_listed(6));
        // Listed again: nothing more is gone.
        assert!(id.gone(&ListedNetns::new(Some(&b))).is_empty());
    }

    #[test]
    fn a_cookie_learned_later_is_remembered() {
        let mut id = NetnsIdentity::default();
        let a = listing(&[(5, None)]);
        id.gone(&ListedNetns::new(Some(&a)));
        let b = listing(&[(5, Some(3))]);
        assert!(id.gone(&ListedNetns::new(Some(&b))).is_empty());
        let c = listing(&[(5, Some(9))]);
        assert_eq!(
            id.gone(&ListedNetns::new(Some(&c))),
            vec![Gone {
                netns: 5,
                cookie: Some(3),
                inode_free: false
            }]
        );
    }

    #[test]
    fn retired_cookies_are_bounded_per_inode() {
        let mut id = NetnsIdentity::default();
        let none = ListedNetns::new(None);
        for c in 1..=40u64 {
            id.observe([(3, c)], &none);
        }
        assert_eq!(id.holders[&3].retired.len(), RETIRED_PER_INODE);
        assert_eq!(id.holder(3), Some(40));
    }
}
