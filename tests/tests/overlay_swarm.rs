//! The overlay-MTU outage on a real two-node Docker Swarm (see `fathom_tests::swarm`).

use fathom_tests::{require_root, swarm::Swarm};

#[test]
fn swarm_topology_smoke() {
    require_root!();
    let s = Swarm::shared();
    let net = s.overlay(Some(1550));
    let svc = s.global_service(&net);
    for n in [&s.a, &s.b] {
        let t = svc.task_on(n);
        eprintln!("task {t:?}");
        let p = n.overlay_netns_path(&net);
        eprintln!("overlay ns {} exists={}", p.display(), p.exists());
    }
    eprintln!("vni {:?}", net.vni());
}
