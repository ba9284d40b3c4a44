//! Recent reclaim stall per memory cgroup: the kernel's cumulative stall time sampled once a
//! second, so "stall in the last 10 s / 60 s" can be answered when an OOM kill arrives (the
//! kernel map only holds totals).
//!
//! Only changes are stored: a cgroup that does not reclaim costs one entry, however long it
//! lives. Samples older than the longest window are dropped except the newest of them (the
//! baseline the window starts from). Bounded by `max_cgroups`: the least recently changed
//! cgroups are forgotten first.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

/// The longest window asked about.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Series {
    /// (time, cumulative stall ns), oldest first, values strictly increasing.
    samples: VecDeque<(Instant, u64)>,
}

impl Series {
    fn last(&self) -> Option<(Instant, u64)> {
        self.samples.back().copied()
    }

    /// Cumulative value at `t`: the newest sample at or before `t`, else the oldest known.
    fn at(&self, t: Instant) -> Option<u64> {
        self.samples
            .iter()
            .rev()
            .find(|(st, _)| *st <= t)
            .or(self.samples.front())
            .map(|(_, v)| *v)
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct StallHistory {
    series: HashMap<u64, Series>,
    max_cgroups: usize,
}

impl StallHistory {
    pub fn new(max_cgroups: usize) -> Self {
        Self {
            series: HashMap::new(),
            max_cgroups: max_cgroups.max(1),
        }
    }

    /// Records the current cumulative stall ns of every memory cgroup the kernel map holds.
    pub fn sample(&mut self, now: Instant, totals: &HashMap<u64, u64>) {
        for (&id, &total) in totals {
            let s = self.series.entry(id).or_default();
            match s.last() {
                Some((_, v)) if v == total => {}
                // A smaller value: the key was deleted and recreated; start over.
                Some((_, v)) if total < v => {
                    s.samples.clear();
                    s.samples.push_back((now, total));
                }
                _ => s.samples.push_back((now, total)),
            }
            while s.samples.len() > 1 && now.saturating_duration_since(s.samples[1].0) >= WINDOW {
                s.samples.pop_front();
            }
        }
        self.series.retain(|id, _| totals.contains_key(id));
        if self.series.len() > self.max_cgroups {
            let mut by_age: Vec<(Instant, u64)> = self
                .series
                .iter()
                .filter_map(|(id, s)| Some((s.last()?.0, *id)))
                .collect();
            by_age.sort();
            let excess = self.series.len() - self.max_cgroups;
            for (_, id) in by_age.into_iter().take(excess) {
                self.series.remove(&id);
            }
        }
    }

    /// Stall time of memory cgroup `id` between `now - window` and `now`, from the samples
    /// (`None`: never seen stalling). With `current` (a fresh kernel reading) the part since
    /// the last sample is included.
    pub fn stall_in(
        &self,
        id: u64,
        window: Duration,
        now: Instant,
        current: Option<u64>,
    ) -> Option<Duration> {
        let s = self.series.get(&id)?;
        let (_, last) = s.last()?;
        let end = current.unwrap_or(last).max(last);
        let start = s.at(now.checked_sub(window)?)?;
        Some(Duration::from_nanos(end.saturating_sub(start)))
    }

    /// Stall ns added since the previous sample, per cgroup that changed at `now` (for the
    /// capture's threshold): the two newest samples when the newest is from `now`.
    pub fn latest_growth(&self, now: Instant) -> Vec<(u64, u64, Duration)> {
        self.series
            .iter()
            .filter_map(|(id, s)| {
                let n = s.samples.len();
                let (t1, v1) = *s.samples.get(n.checked_sub(1)?)?;
                let (t0, v0) = *s.samples.get(n.checked_sub(2)?)?;
                (t1 == now).then(|| (*id, v1 - v0, t1.saturating_duration_since(t0)))
            })
            .collect()
    }

    /// When the stall of `id` last grew (or was first seen).
    pub fn last_change(&self, id: u64) -> Option<Instant> {
        Some(self.series.get(&id)?.last()?.0)
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn totals(v: &[(u64, u64)]) -> HashMap<u64, u64> {
        v.iter().copied().collect()
    }

    #[test]
    fn windows_count_only_what_grew_inside_them() {
        let t0 = Instant::now();
        let mut h = StallHistory::new(10);
        h.sample(t0, &totals(&[(7, 1_000)]));
        // 100 ms of stall per second for 70 s.
        for i in 1..=70u64 {
            h.sample(t0 + S * i as u32, &totals(&[(7, 1_000 + i * 100_000_000)]));
        }
        let now = t0 + S * 70;
        assert_eq!(h.stall_in(7, Duration::from_secs(10), now, None), Some(S));
        assert_eq!(h.stall_in(7, WINDOW, now, None), Some(S * 6));
        // A fresh reading after the last sample counts too.
        assert_eq!(
            h.stall_in(
                7,
                Duration::from_secs(10),
                now,
                Some(1_000 + 70 * 100_000_000 + 5)
            ),
            Some(S + Duration::from_nanos(5))
        );
        assert_eq!(h.stall_in(8, WINDOW, now, None), None);
        assert!(h.series[&7].samples.len() <= 62, "old samples dropped");
    }

    #[test]
    fn quiet_cgroups_keep_one_sample_and_report_zero() {
        let t0 = Instant::now();
        let mut h = StallHistory::new(10);
        for i in 0..100u32 {
            h.sample(t0 + S * i, &totals(&[(1, 5)]));
        }
        assert_eq!(h.series[&1].samples.len(), 1);
        let now = t0 + S * 99;
        assert_eq!(
            h.stall_in(1, Duration::from_secs(10), now, None),
            Some(Duration::ZERO)
        );
        assert!(h.latest_growth(now).is_empty());
    }

    #[test]
    fn growth_per_tick_and_bounds() {
        let t0 = Instant::now();
        let mut h = StallHistory::new(2);
        h.sample(t0, &totals(&[(1, 0), (2, 0), (3, 0)]));
        assert_eq!(h.len(), 2, "bounded");
        let mut h = StallHistory::new(10);
        h.sample(t0, &totals(&[(1, 0), (2, 10)]));
        h.sample(t0 + S, &totals(&[(1, 300), (2, 10)]));
        assert_eq!(h.latest_growth(t0 + S), vec![(1, 300, S)]);
        // Gone from the kernel map: forgotten.
        h.sample(t0 + S * 2, &totals(&[(2, 10)]));
        assert_eq!(h.len(), 1);
    }
}
