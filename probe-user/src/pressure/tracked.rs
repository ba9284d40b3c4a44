//! Which memory cgroups the scrape-time pressure collector reads.
//!
//! Walking the cgroup tree every scrape is what an earlier benchmark found costly (thousands
//! of directories, most of them leftovers). Instead the candidates come from what fathom
//! already knows: the containers the attribution's process scan found (and their pods), and
//! the memory cgroups the kernel saw reclaiming. A candidate is kept while its directory
//! exists — so a container whose process was just OOM-killed keeps its series — and only
//! cgroups with a memory limit are reported. Bounded: past `cap`, new candidates are not
//! taken (counted in [`Tracked::refused`]).

use std::collections::BTreeSet;

use crate::container;

#[derive(Debug)]
pub struct Tracked {
    paths: BTreeSet<String>,
    cap: usize,
    refused: u64,
}

impl Tracked {
    pub fn new(cap: usize) -> Self {
        Self {
            paths: BTreeSet::new(),
            cap,
            refused: 0,
        }
    }

    /// Adds a memory-cgroup path ("/a/b") and, for a container of a pod, the pod's cgroup.
    pub fn add(&mut self, path: &str) {
        if path.is_empty() || path == "/" {
            return;
        }
        let parsed = container::parse(path);
        if let Some(pod) = parsed.pod {
            let pod_path: String = path
                .split('/')
                .filter(|p| !p.is_empty())
                .take(pod.component + 1)
                .fold(String::new(), |acc, p| acc + "/" + p);
            if pod_path != path {
                self.insert(pod_path);
            }
        }
        self.insert(path.to_string());
    }

    fn insert(&mut self, p: String) {
        if self.paths.contains(&p) {
            return;
        }
        if self.paths.len() >= self.cap {
            self.refused += 1;
            return;
        }
        self.paths.insert(p);
    }

    /// Drops candidates for which `exists` is false.
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        self.paths.retain(|p| exists(p));
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.paths.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Candidates not taken because the bound was reached.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "9c3f7e2a-41d5-4a6b-b0f2-8d1e5c7a3b90";

    #[test]
    fn containers_bring_their_pod_and_the_bound_holds() {
        let mut t = Tracked::new(3);
        t.add(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        let v: Vec<&str> = t.paths().collect();
        assert_eq!(
            v,
            vec![
                format!("/kubepods/burstable/pod{UID}"),
                format!("/kubepods/burstable/pod{UID}/{ID}")
            ]
        );
        t.add("/");
        t.add("/plain");
        t.add("/plain");
        t.add("/other");
        assert_eq!(t.len(), 3);
        assert_eq!(t.refused(), 1);
        t.retain(|p| p != "/plain");
        assert_eq!(t.len(), 2);
    }
}
