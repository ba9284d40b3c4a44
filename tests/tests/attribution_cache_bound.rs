//! Memory stays bounded under cgroup churn: 1,000 container-like cgroups are created, looked
//! up by id and by path, and removed; every cache stays within its configured bound and the
//! id cache empties once they are gone.

use std::time::Duration;

use fathom::attribution::{AttributionConfig, Attributor, Hierarchy};
use fathom_tests::{
    TestCgroup, cgroup::unique_root_name, require_root, runc::container_id_64hex, runc::pod_uid,
};

#[test]
fn caches_stay_bounded_while_1000_cgroups_come_and_go() {
    require_root!();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    const IDS: usize = 256;
    const CONTAINERS: usize = 128;
    let dir = fathom_tests::TempDir::new("fathom-attr-bound-").unwrap();
    let attr = Attributor::start(AttributionConfig {
        // A socket path that does not exist: lookups are scheduled and answered "unavailable".
        docker_socket: Some(dir.path().join("docker.sock")),
        max_cgroup_ids: IDS,
        max_containers: CONTAINERS,
        max_pods: 64,
        ..AttributionConfig::without_runtimes()
    });

    let root = unique_root_name();
    for round in 0..2 {
        // 1,000 container cgroups alive at once, each looked up by path and by both ids.
        let cgs: Vec<TestCgroup> = (0..1000)
            .map(|_| {
                TestCgroup::create(&format!(
                    "{root}/kubepods/burstable/pod{}/{}",
                    pod_uid(),
                    container_id_64hex()
                ))
            })
            .collect();
        for cg in &cgs {
            let path = format!("/{}", cg.rel_path());
            assert!(attr.by_cgroup_path(&path).container.is_some());
            assert_eq!(
                attr.by_cgroup_id(Hierarchy::Memory, cg.memory_cgroup_id())
                    .as_deref(),
                Some(path.as_str())
            );
            if let Some(id) = cg.unified_cgroup_id() {
                assert_eq!(
                    attr.by_cgroup_id(Hierarchy::Unified, id).as_deref(),
                    Some(path.as_str())
                );
            }
        }
        let s = attr.stats();
        eprintln!("round {round}, 1000 cgroups alive: {s:?}");
        // One cache per distinct hierarchy (two on hybrid hosts), each full but not more.
        let hierarchies = if cgs[0].unified_path() == Some(cgs[0].memory_path()) {
            1
        } else {
            2
        };
        assert_eq!(s.cgroup_ids, hierarchies * IDS, "{s:?}");
        assert!(s.containers <= CONTAINERS, "{s:?}");
        assert!(s.pods <= 64, "{s:?}");
        // Evicted ids still resolve (directly through the kernel), correctly.
        let first = &cgs[0];
        assert_eq!(
            attr.by_cgroup_id(Hierarchy::Memory, first.memory_cgroup_id()),
            Some(format!("/{}", first.rel_path()))
        );
        let ids: Vec<u64> = cgs.iter().map(|c| c.memory_cgroup_id()).collect();
        drop(cgs);
        // Removed cgroups leave the cache on the next rescan, and their ids answer None
        // (remembered as missing, within that cache's own bound), never a stale path.
        rt.block_on(attr.rescan());
        let s = attr.stats();
        eprintln!("round {round}, all removed: {s:?}");
        assert_eq!(s.cgroup_ids, 0, "after removal: {s:?}");
        for id in &ids {
            assert_eq!(attr.by_cgroup_id(Hierarchy::Memory, *id), None);
        }
        let s = attr.stats();
        assert!(s.cgroup_ids_missing <= hierarchies * IDS, "{s:?}");
        assert!(s.netns <= 1, "{s:?}");
    }
    rt.block_on(tokio::time::sleep(Duration::from_millis(100)));
    let s = attr.stats();
    assert!(s.lookups > 0 && s.lookups_found == 0, "{s:?}");
    assert!(s.containers <= CONTAINERS, "{s:?}");
}
