//! Bounded, TTL'd cache of runtime answers per container id, with at most one lookup in
//! flight per id.
//!
//! Readers never wait: [`MetaCache::get`] answers from memory and tells the caller whether it
//! should start a lookup (it then "claims" the id, so concurrent misses start one lookup, not
//! one each). A lookup ends with [`MetaCache::complete`], which wakes everyone waiting for that
//! id ([`MetaCache::waiter`]). Answers expire by kind: a found container lives long (names do
//! not change), "not found" shortly (negative caching, so a flood of events from an unknown
//! cgroup costs one lookup per TTL), "runtime unavailable" shortest. An expired answer is
//! still served while its refresh runs.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lru::LruCache;
use tokio::sync::watch;

use super::workload::ContainerMeta;

/// What the runtimes said about a container id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Found(Arc<ContainerMeta>),
    /// Every reachable runtime answered and none knows the id.
    NotFound,
    /// No runtime could answer (no socket, timeouts, errors).
    Unavailable,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Ttls {
    pub found: Duration,
    pub not_found: Duration,
    pub unavailable: Duration,
    /// A claim older than this is considered lost (its task died) and may be re-claimed.
    pub pending: Duration,
}

enum Slot {
    Pending {
        since: Instant,
        done: watch::Receiver<()>,
        previous: Option<Arc<ContainerMeta>>,
    },
    Done {
        answer: Answer,
        at: Instant,
    },
}

/// A claim on an id: whoever holds it runs the lookup and must call `complete` (or `abandon`).
/// Dropping the sender wakes the waiters.
pub(crate) struct Claim {
    _done: watch::Sender<()>,
}

pub(crate) struct MetaCache {
    slots: Mutex<LruCache<String, Slot>>,
    ttls: Ttls,
}

impl MetaCache {
    pub(crate) fn new(capacity: usize, ttls: Ttls) -> Self {
        MetaCache {
            slots: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("nonzero"),
            )),
            ttls,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl(&self, a: &Answer) -> Duration {
        match a {
            Answer::Found(_) => self.ttls.found,
            Answer::NotFound => self.ttls.not_found,
            Answer::Unavailable => self.ttls.unavailable,
        }
    }

    /// The best known metadata for `id`, and a claim when a lookup should start now.
    pub(crate) fn get(&self, id: &str) -> (Option<Arc<ContainerMeta>>, Option<Claim>) {
        let now = Instant::now();
        let mut slots = self.lock();
        let previous = match slots.get(id) {
            Some(Slot::Done { answer, at }) => {
                let meta = match answer {
                    Answer::Found(m) => Some(m.clone()),
                    _ => None,
                };
                if now.duration_since(*at) < self.ttl(answer) {
                    return (meta, None);
                }
                meta
            }
            Some(Slot::Pending {
                since, previous, ..
            }) => {
                if now.duration_since(*since) < self.ttls.pending {
                    return (previous.clone(), None);
                }
                previous.clone()
            }
            None => None,
        };
        let (tx, rx) = watch::channel(());
        slots.put(
            id.to_string(),
            Slot::Pending {
                since: now,
                done: rx,
                previous: previous.clone(),
            },
        );
        (previous, Some(Claim { _done: tx }))
    }

    /// A receiver that completes when the lookup in flight for `id` ends; None when nothing is
    /// in flight.
    pub(crate) fn waiter(&self, id: &str) -> Option<watch::Receiver<()>> {
        match self.lock().peek(id) {
            Some(Slot::Pending { done, .. }) => Some(done.clone()),
            _ => None,
        }
    }

    /// Stores the answer of a claimed lookup and wakes its waiters. A found container that
    /// answers "unavailable" on refresh keeps its old metadata (the runtime is only down).
    pub(crate) fn complete(&self, id: &str, answer: Answer, claim: Claim) {
        let mut slots = self.lock();
        let answer = match (answer, slots.peek(id)) {
            (
                Answer::Unavailable,
                Some(Slot::Pending {
                    previous: Some(m), ..
                }),
            ) => Answer::Found(m.clone()),
            (a, _) => a,
        };
        slots.put(
            id.to_string(),
            Slot::Done {
                answer,
                at: Instant::now(),
            },
        );
        drop(slots);
        drop(claim);
    }

    /// Gives a claim back without an answer (the lookup could not be scheduled).
    pub(crate) fn abandon(&self, id: &str, claim: Claim) {
        let mut slots = self.lock();
        if let Some(Slot::Pending { previous, .. }) = slots.peek(id) {
            match previous.clone() {
                Some(m) => {
                    // Keep serving the old answer; it is expired, so the next get re-claims.
                    slots.put(
                        id.to_string(),
                        Slot::Done {
                            answer: Answer::Found(m),
                            at: Instant::now() - self.ttls.found,
                        },
                    );
                }
                None => {
                    slots.pop(id);
                }
            }
        }
        drop(slots);
        drop(claim);
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::Runtime;

    fn ttls() -> Ttls {
        Ttls {
            found: Duration::from_secs(60),
            not_found: Duration::from_millis(30),
            unavailable: Duration::from_millis(10),
            pending: Duration::from_secs(5),
        }
    }

    fn meta(name: &str) -> Arc<ContainerMeta> {
        Arc::new(ContainerMeta {
            runtime: Runtime::Docker,
            name: Some(name.into()),
            pod_uid: None,
            pod_name: None,
            pod_namespace: None,
            swarm: None,
            compose: None,
        })
    }

    #[test]
    fn one_claim_per_id_and_answers_cached() {
        let c = MetaCache::new(8, ttls());
        let (m, claim) = c.get("a");
        assert!(m.is_none());
        let claim = claim.expect("first miss claims");
        // Concurrent misses do not claim again, and can wait.
        assert!(c.get("a").1.is_none());
        let w = c.waiter("a").expect("in flight");
        c.complete("a", Answer::Found(meta("x")), claim);
        assert!(w.has_changed().is_err(), "sender dropped: waiters wake");
        let (m, claim) = c.get("a");
        assert_eq!(m.unwrap().name.as_deref(), Some("x"));
        assert!(claim.is_none());
        assert!(c.waiter("a").is_none());
    }

    #[test]
    fn negative_answers_expire_and_bound_holds() {
        let c = MetaCache::new(4, ttls());
        let (_, claim) = c.get("gone");
        c.complete("gone", Answer::NotFound, claim.unwrap());
        assert!(c.get("gone").1.is_none(), "negative answer cached");
        std::thread::sleep(Duration::from_millis(40));
        let (m, claim) = c.get("gone");
        assert!(m.is_none() && claim.is_some(), "expired: lookup again");
        for i in 0..100 {
            let id = format!("c{i}");
            if let (_, Some(claim)) = c.get(&id) {
                c.complete(&id, Answer::Unavailable, claim);
            }
        }
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn refresh_serves_stale_and_survives_runtime_outage() {
        let mut t = ttls();
        t.found = Duration::from_millis(10);
        let c = MetaCache::new(4, t);
        let (_, claim) = c.get("a");
        c.complete("a", Answer::Found(meta("x")), claim.unwrap());
        std::thread::sleep(Duration::from_millis(20));
        let (m, claim) = c.get("a");
        assert_eq!(
            m.unwrap().name.as_deref(),
            Some("x"),
            "stale while refreshing"
        );
        c.complete("a", Answer::Unavailable, claim.unwrap());
        assert_eq!(c.get("a").0.unwrap().name.as_deref(), Some("x"));
        // Abandoned claims do not leave the id stuck in flight.
        let (_, claim) = c.get("b");
        c.abandon("b", claim.unwrap());
        assert!(c.get("b").1.is_some());
    }
}
