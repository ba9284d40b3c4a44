//! `fathom_oom_kills_total{namespace,pod,container,cgroup,scope}`: OOM kills counted from the
//! event stream (the kernel keeps no OOM counter per cgroup that survives the cgroup).

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
};
use tracing::debug;

use super::{
    labels::{LabelSource, WorkloadLabels},
    store::CounterStore,
};
use crate::oom::OomKill;

const NAME: &str = "fathom_oom_kills";
const HELP: &str = "OOM kills by victim workload and by the scope of the limit that was hit (container, pod, cgroup, host)";

/// Series key: the workload labels and the OOM domain's scope.
type Key = (WorkloadLabels, &'static str);

/// Counts OOM kills per victim workload.
pub struct OomKills {
    store: Mutex<CounterStore<Key>>,
    /// Zero series of the containers found in the cgroup hierarchies ([`super::oom_zeros`]).
    zeros: Mutex<Option<Arc<super::oom_zeros::CgroupScan>>>,
    labels: Arc<dyn LabelSource>,
    workload_labels: bool,
}

impl std::fmt::Debug for OomKills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OomKills").finish_non_exhaustive()
    }
}

impl OomKills {
    /// `workload_labels = false` leaves namespace/pod/container/cgroup empty (very large
    /// nodes): one series per scope.
    pub fn new(
        ttl: std::time::Duration,
        labels: Arc<dyn LabelSource>,
        workload_labels: bool,
    ) -> Self {
        Self {
            store: Mutex::new(CounterStore::new(ttl)),
            zeros: Mutex::new(None),
            labels,
            workload_labels,
        }
    }

    /// Exports a zero series for every container `scan` finds.
    pub fn set_zero_source(&self, scan: super::oom_zeros::CgroupScan) {
        *self.zeros.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(scan));
    }

    pub fn record(&self, kill: &OomKill) {
        self.record_at(kill, Instant::now());
    }

    fn record_at(&self, kill: &OomKill, now: Instant) {
        let (labels, anchor) = if self.workload_labels {
            self.labels.oom_kill(kill)
        } else {
            (WorkloadLabels::default(), super::labels::Anchor::Host)
        };
        let key = (labels, kill.oom_domain.scope.as_str());
        self.lock().add(key, 1, anchor, now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CounterStore<Key>> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Expires gone workloads' series, then returns what is left.
    fn collect_at(&self, now: Instant) -> Vec<(Key, u64)> {
        let scan = self.zeros.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let zeros = scan.map(|s| s.keys(now)).unwrap_or_default();
        let mut store = self.lock();
        let expired = store.expire(now, &|a: &_| self.labels.is_alive(a));
        if expired > 0 {
            debug!(expired, "OOM kill series of gone workloads expired");
        }
        store.scrape(zeros)
    }
}

impl Collector for OomKills {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let series = self.collect_at(Instant::now());
        let mut family = encoder.encode_descriptor(NAME, HELP, None, MetricType::Counter)?;
        for ((labels, scope), value) in series {
            let [namespace, pod, container, cgroup] = labels.values();
            let set = [
                ("namespace", namespace),
                ("pod", pod),
                ("container", container),
                ("cgroup", cgroup),
                ("scope", scope),
            ];
            ConstCounter::new(value).encode(family.encode_family(&set)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{clock::BootClock, metrics::labels::CgroupPathLabels, oom::OomInterpreter};

    fn kill() -> OomKill {
        let rec = crate::events::tests::as_bytes(&crate::events::tests::sample_record());
        let crate::events::RawEvent::OomKill(k) = crate::events::decode(&rec).unwrap() else {
            panic!("not an OOM record")
        };
        OomInterpreter::new(BootClock::new(), 4096, None, None).interpret(&k)
    }

    /// Labels from paths below a hierarchy root that does not exist: every workload is gone.
    fn all_gone() -> Arc<dyn LabelSource> {
        let root = std::path::PathBuf::from("/nonexistent/fathom-unit-test");
        Arc::new(CgroupPathLabels::new(crate::cgroup::Hierarchies {
            unified: Some(root.clone()),
            memory: Some(root),
        }))
    }

    #[test]
    fn counts_per_workload_and_expires_gone_ones() {
        let ttl = Duration::from_secs(5);
        let oom = OomKills::new(ttl, all_gone(), true);
        let t0 = Instant::now();
        oom.record_at(&kill(), t0);
        oom.record_at(&kill(), t0);
        // Never exported before: the first scrape shows it at 0, the next one its count.
        let first = oom.collect_at(t0);
        assert_eq!(first[0].1, 0);
        let s = oom.collect_at(t0);
        assert_eq!(s.len(), 1);
        let ((labels, scope), n) = &s[0];
        assert_eq!(*n, 2);
        assert_eq!(labels.cgroup, "/a/b", "a plain cgroup is named by its path");
        assert_eq!(*scope, "cgroup");
        assert!(oom.collect_at(t0 + ttl).is_empty());
    }

    #[test]
    fn without_workload_labels_only_the_scope_remains() {
        let oom = OomKills::new(Duration::from_secs(5), all_gone(), false);
        oom.record(&kill());
        oom.collect_at(Instant::now());
        let s = oom.collect_at(Instant::now() + Duration::from_secs(3600));
        assert_eq!(s, vec![((WorkloadLabels::default(), "cgroup"), 1)]);
    }

    #[test]
    fn encodes_one_counter_family_in_both_formats() {
        let oom = Arc::new(OomKills::new(Duration::from_secs(5), all_gone(), true));
        oom.record(&kill());
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(oom));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("cgroup=\"/a/b\",scope=\"cgroup\"} 0\n"),
            "{text}"
        );
        text.clear();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# TYPE fathom_oom_kills_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "fathom_oom_kills_total{namespace=\"\",pod=\"\",container=\"\",cgroup=\"/a/b\",scope=\"cgroup\"} 1\n"
            ),
            "{text}"
        );
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &registry).unwrap();
        assert!(om.contains("# TYPE fathom_oom_kills counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }
}
