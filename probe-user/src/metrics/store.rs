//! Label-keyed counters that never go backwards while a series lives, and that expire once
//! the workload behind a series is gone.
//!
//! Two ways in:
//! - [`CounterStore::add`] for counts userspace makes itself (one OOM kill event = +1);
//! - [`CumulativeCounters::observe`] for cumulative values read from a kernel map at scrape
//!   time (per-CPU hash keyed by netns / reason / device …). It adds the growth since the
//!   previous reading of the same kernel key to the series the key maps to *now*. A series
//!   therefore stays monotonic when attribution of a key changes (later growth goes to the new
//!   labels), when several keys share one label set, or when the kernel deletes and recreates
//!   a key (its count restarts from 0: the new value is all growth).
//!
//! First increments visible to `increase()`: Prometheus (2.42 ignores OpenMetrics `_created`)
//! computes nothing for a series whose first sample is already its first count. So every
//! series is *scraped at 0 before it shows a count* ([`CounterStore::scrape`]): families pass
//! the label sets of the workloads they know (pods, containers, namespaces) as **zero
//! series**, exported at 0 while the workload exists and has no count; a series that gets a
//! count without having been exported at 0 (a pod created and OOM-killed between two
//! scrapes) is exported at 0 by its first scrape and with its value from the next one on. The
//! value then lags by one scrape once, and `increase()` over a window holding both scrapes
//! equals the kernel's count. (With several scrapers, e.g. an HA pair, only the first scrape
//! shows the 0.)
//!
//! Expiry: a series whose [`Anchor`] (pod / container cgroup, network namespace, …) is gone
//! and that has not changed for `ttl` is removed at the next [`CounterStore::expire`]. While
//! the anchor exists a series never expires, however old its last change. Series fed from a
//! kernel map ([`CumulativeCounters::expire`]) also expire once no kernel key maps to them any
//! more (the key's labels changed: a device got its name, a pod its name) and they have not
//! changed for `ttl`: they cannot grow again, and their anchor may well live forever.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    time::{Duration, Instant},
};

use super::labels::Anchor;

/// Tells whether an [`Anchor`] still exists (see [`super::labels::LabelSource::is_alive`]).
pub trait Liveness {
    fn is_alive(&self, anchor: &Anchor) -> bool;
}

impl<F: Fn(&Anchor) -> bool> Liveness for F {
    fn is_alive(&self, anchor: &Anchor) -> bool {
        self(anchor)
    }
}

#[derive(Clone, Debug)]
struct Series {
    value: u64,
    last_change: Instant,
    anchor: Anchor,
    /// A scrape has shown this series (at 0 or with its value).
    exported: bool,
}

/// Monotonic counters keyed by a label set `L`.
#[derive(Debug)]
pub struct CounterStore<L> {
    ttl: Duration,
    series: HashMap<L, Series>,
    /// The zero series the previous [`Self::scrape`] exported.
    zeros_shown: HashSet<L>,
}

impl<L: Clone + Eq + Hash + Ord> CounterStore<L> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            series: HashMap::new(),
            zeros_shown: HashSet::new(),
        }
    }

    /// What one scrape exports, sorted by labels: every series (one that was never exported,
    /// neither itself nor as a zero series, at 0 this once) and every label set of `zeros`
    /// that has no series yet, at 0. See the module docs.
    pub fn scrape(&mut self, zeros: impl IntoIterator<Item = L>) -> Vec<(L, u64)> {
        let zeros: HashSet<L> = zeros.into_iter().collect();
        let mut v: Vec<(L, u64)> = Vec::with_capacity(self.series.len() + zeros.len());
        for (l, s) in self.series.iter_mut() {
            let shown = if s.exported || self.zeros_shown.contains(l) {
                s.value
            } else {
                0
            };
            s.exported = true;
            v.push((l.clone(), shown));
        }
        let mut shown_now = HashSet::with_capacity(zeros.len());
        for l in zeros {
            if !self.series.contains_key(&l) {
                v.push((l.clone(), 0));
                shown_now.insert(l);
            }
        }
        self.zeros_shown = shown_now;
        v.sort();
        v
    }

    /// Adds `delta` to the series `labels` (created at 0 when new). A zero `delta` creates the
    /// series but does not count as a change. The anchor is replaced by the latest one: a
    /// series follows the newest workload instance carrying its labels.
    pub fn add(&mut self, labels: L, delta: u64, anchor: Anchor, now: Instant) {
        let s = self.series.entry(labels).or_insert(Series {
            value: 0,
            last_change: now,
            anchor: anchor.clone(),
            exported: false,
        });
        if delta > 0 {
            s.value = s.value.saturating_add(delta);
            s.last_change = now;
            s.anchor = anchor;
        }
    }

    /// Removes series whose anchor is gone and whose last change is at least `ttl` old;
    /// [`Anchor::Host`] series never expire. Returns how many were removed.
    pub fn expire(&mut self, now: Instant, liveness: &impl Liveness) -> usize {
        self.expire_where(now, |_, anchor| {
            *anchor == Anchor::Host || liveness.is_alive(anchor)
        })
    }

    /// Removes series whose last change is at least `ttl` old and for which `keep(labels,
    /// anchor)` is false. Returns how many were removed.
    pub fn expire_where(&mut self, now: Instant, keep: impl Fn(&L, &Anchor) -> bool) -> usize {
        let ttl = self.ttl;
        let before = self.series.len();
        self.series.retain(|labels, s| {
            now.saturating_duration_since(s.last_change) < ttl || keep(labels, &s.anchor)
        });
        before - self.series.len()
    }

    /// Every series and its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&L, u64)> {
        self.series.iter().map(|(l, s)| (l, s.value))
    }

    /// Every series and its value, sorted by labels (stable output for scrapes and tests).
    pub fn snapshot(&self) -> Vec<(L, u64)> {
        let mut v: Vec<(L, u64)> = self
            .series
            .iter()
            .map(|(l, s)| (l.clone(), s.value))
            .collect();
        v.sort();
        v
    }

    pub fn get(&self, labels: &L) -> Option<u64> {
        self.series.get(labels).map(|s| s.value)
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// A [`CounterStore`] fed from cumulative per-key kernel counters read at scrape time.
#[derive(Debug)]
pub struct CumulativeCounters<K, L> {
    store: CounterStore<L>,
    last: HashMap<K, u64>,
    /// Label sets some kernel key mapped to at the latest reading.
    fed: HashSet<L>,
}

impl<K: Clone + Eq + Hash, L: Clone + Eq + Hash + Ord> CumulativeCounters<K, L> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            store: CounterStore::new(ttl),
            last: HashMap::new(),
            fed: HashSet::new(),
        }
    }

    /// Records one scrape's readings: for each kernel key its cumulative value, the labels it
    /// maps to now and the anchor of that workload. Keys absent from this reading are
    /// forgotten, so a key the kernel recreates counts from 0 again.
    ///
    /// A key already seen that did not grow creates no series: an expired series is not
    /// brought back (at 0) by a kernel entry that merely still exists, and a key whose labels
    /// changed starts the new series only when it counts again.
    pub fn observe(
        &mut self,
        readings: impl IntoIterator<Item = (K, u64, L, Anchor)>,
        now: Instant,
    ) {
        let mut seen = HashSet::new();
        self.fed.clear();
        for (key, total, labels, anchor) in readings {
            let prev = self.last.insert(key.clone(), total);
            // A smaller value than last time means the kernel entry was deleted and recreated
            // between two scrapes: everything it holds now is new.
            let delta = match prev {
                Some(p) if total >= p => total - p,
                _ => total,
            };
            if delta > 0 || prev.is_none() {
                self.store.add(labels.clone(), delta, anchor, now);
            }
            self.fed.insert(labels);
            seen.insert(key);
        }
        self.last.retain(|k, _| seen.contains(k));
    }

    /// Removes series that have not changed for `ttl` and either lost their anchor or are no
    /// longer fed by any kernel key (see the module docs). Returns how many were removed.
    pub fn expire(&mut self, now: Instant, liveness: &impl Liveness) -> usize {
        let fed = &self.fed;
        self.store.expire_where(now, |labels, anchor| {
            fed.contains(labels) && (*anchor == Anchor::Host || liveness.is_alive(anchor))
        })
    }

    pub fn store(&self) -> &CounterStore<L> {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut CounterStore<L> {
        &mut self.store
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn cg(p: &str) -> Anchor {
        Anchor::Cgroup(std::path::Path::new(p).into())
    }

    #[test]
    fn adds_and_snapshots_sorted() {
        let t0 = Instant::now();
        let mut s = CounterStore::new(TTL);
        s.add("b", 1, Anchor::Host, t0);
        s.add("a", 2, Anchor::Host, t0);
        s.add("b", 3, Anchor::Host, t0);
        assert_eq!(s.snapshot(), vec![("a", 2), ("b", 4)]);
    }

    #[test]
    fn a_series_is_scraped_at_zero_before_its_first_count() {
        let t0 = Instant::now();
        let mut s = CounterStore::new(TTL);
        // Known workload: exported at 0, and its first count shows at once.
        assert_eq!(s.scrape(["known"]), vec![("known", 0)]);
        s.add("known", 1, Anchor::Host, t0);
        // A series born with a count, never shown at 0: 0 this scrape, 2 from the next.
        s.add("new", 2, Anchor::Host, t0);
        assert_eq!(s.scrape(["known"]), vec![("known", 1), ("new", 0)]);
        assert_eq!(s.scrape(["known"]), vec![("known", 1), ("new", 2)]);
        // A zero series whose workload is no longer known is no longer exported.
        assert_eq!(
            s.scrape(["other"]),
            vec![("known", 1), ("new", 2), ("other", 0)]
        );
        assert_eq!(s.scrape([]), vec![("known", 1), ("new", 2)]);
    }

    #[test]
    fn only_gone_and_stale_series_expire() {
        let t0 = Instant::now();
        let mut s = CounterStore::new(TTL);
        s.add("gone", 1, cg("/gone"), t0);
        s.add("alive", 1, cg("/alive"), t0);
        s.add("host", 1, Anchor::Host, t0);
        let live = |a: &Anchor| *a != cg("/gone");
        // Gone but changed recently: stays so Prometheus sees its last value.
        assert_eq!(s.expire(t0 + TTL / 2, &live), 0);
        assert_eq!(s.expire(t0 + TTL, &live), 1);
        assert_eq!(s.get(&"gone"), None);
        // Alive series never expire, however old.
        assert_eq!(s.expire(t0 + TTL * 100, &live), 0);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_change_restarts_the_ttl_and_moves_the_anchor() {
        let t0 = Instant::now();
        let mut s = CounterStore::new(TTL);
        s.add("c", 1, cg("/old"), t0);
        s.add("c", 1, cg("/new"), t0 + TTL);
        let live = |a: &Anchor| *a == cg("/new");
        assert_eq!(s.expire(t0 + TTL * 3, &live), 0, "anchor moved to /new");
        let none = |_: &Anchor| false;
        assert_eq!(s.expire(t0 + TTL + TTL / 2, &none), 0, "changed at t0+TTL");
        assert_eq!(s.expire(t0 + TTL * 2, &none), 1);
    }

    #[test]
    fn cumulative_readings_stay_monotonic_through_key_churn_and_relabeling() {
        let t0 = Instant::now();
        let mut c: CumulativeCounters<u32, &str> = CumulativeCounters::new(TTL);
        c.observe(
            [(1, 5, "pod-a", Anchor::Host), (2, 3, "pod-a", Anchor::Host)],
            t0,
        );
        assert_eq!(c.store().get(&"pod-a"), Some(8));
        // Key 2 deleted and recreated by the kernel: its 1 is new growth.
        c.observe(
            [(1, 7, "pod-a", Anchor::Host), (2, 1, "pod-a", Anchor::Host)],
            t0,
        );
        assert_eq!(c.store().get(&"pod-a"), Some(11));
        // Key 1 now attributed elsewhere: only its growth moves.
        c.observe([(1, 10, "pod-b", Anchor::Host)], t0);
        assert_eq!(c.store().get(&"pod-a"), Some(11));
        assert_eq!(c.store().get(&"pod-b"), Some(3));
        // Key 2 vanished; when it comes back it counts from 0.
        c.observe(
            [
                (1, 10, "pod-b", Anchor::Host),
                (2, 4, "pod-a", Anchor::Host),
            ],
            t0,
        );
        assert_eq!(c.store().get(&"pod-a"), Some(15));
    }

    #[test]
    fn relabeled_keys_leave_a_series_that_expires_and_is_not_revived() {
        let t0 = Instant::now();
        let alive = |_: &Anchor| true;
        let mut c: CumulativeCounters<u32, &str> = CumulativeCounters::new(TTL);
        c.observe([(1, 5, "if7", Anchor::Host)], t0);
        // The device got its name: nothing new to count yet, so no new series.
        c.observe([(1, 5, "eth0", Anchor::Host)], t0 + TTL);
        assert_eq!(c.store().snapshot(), vec![("if7", 5)]);
        c.observe([(1, 6, "eth0", Anchor::Host)], t0 + TTL);
        assert_eq!(c.store().snapshot(), vec![("eth0", 1), ("if7", 5)]);
        // "if7" is fed by no key any more: it goes once stale, even with a live anchor.
        assert_eq!(c.expire(t0 + TTL, &alive), 1);
        assert_eq!(c.store().snapshot(), vec![("eth0", 1)]);
        // "eth0" is fed: it stays however old.
        c.observe([(1, 6, "eth0", Anchor::Host)], t0 + TTL * 10);
        assert_eq!(c.expire(t0 + TTL * 10, &alive), 0);
    }

    #[test]
    fn a_gone_anchors_series_expires_and_its_unchanged_key_does_not_revive_it() {
        let t0 = Instant::now();
        let gone = |_: &Anchor| false;
        let mut c: CumulativeCounters<u32, &str> = CumulativeCounters::new(TTL);
        c.observe([(1, 5, "ns-a", cg("/gone"))], t0);
        assert_eq!(c.expire(t0 + TTL / 2, &gone), 0, "changed recently");
        c.observe([(1, 5, "ns-a", cg("/gone"))], t0 + TTL);
        assert_eq!(c.expire(t0 + TTL, &gone), 1);
        // The kernel entry still exists with the same value: the series stays gone.
        c.observe([(1, 5, "ns-a", cg("/gone"))], t0 + TTL * 2);
        assert!(c.store().is_empty());
        // Growth (an inode reused by a new namespace) starts a new series with the growth only.
        c.observe([(1, 7, "ns-a", cg("/gone"))], t0 + TTL * 3);
        assert_eq!(c.store().snapshot(), vec![("ns-a", 2)]);
    }
}
