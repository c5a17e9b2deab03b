//! Discovery over real mDNS, inside a private network namespace.
//!
//! The mdns-sd daemon joins its multicast groups on every interface as soon as it is created,
//! so no daemon may ever be created on the host's network stack. The test re-executes this
//! test binary to run itself in a child that first enters a private network namespace (only
//! `lo`, multicast routed to it): [`rjs_harness::netns::isolated_child`].

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};
use rjs_compute::announce::{Announcer, AnnouncerConfig};
use rjs_harness::netns;
use rjs_harness::wait::wait_for;
use rjs_lookup::discovery::{Browser, DiscoveryConfig, NodeView};
use rjs_signer::keys::KeyPair;
use rjs_wire::announce::{Announcement, SERVICE_TYPE};

const INTERVAL: Duration = Duration::from_millis(200);

fn find(nodes: &[NodeView], id: &str) -> Option<NodeView> {
    nodes.iter().find(|n| n.node_id == id).cloned()
}

fn config(id: &str, port: u16) -> AnnouncerConfig {
    AnnouncerConfig {
        groups: vec!["/compute".into(), "/compute/fast".into()],
        interval: INTERVAL,
        interfaces: Some(vec![IfKind::LoopbackV4]),
        ..AnnouncerConfig::new(id, port, 1500, 2)
    }
}

/// Publishes hand-made TXT fields under `id` (a raw publisher, e.g. a replaying attacker).
fn publish_raw(daemon: &ServiceDaemon, id: &str, txt: &[(String, String)]) {
    let mut info = ServiceInfo::new(
        SERVICE_TYPE,
        id,
        &format!("{id}.local."),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        7100,
        txt,
    )
    .unwrap();
    info.set_requires_probe(false);
    daemon.register(info).unwrap();
}

/// Announcements of "rep" signed with `rep` from a raw publisher on loopback: a current one
/// (discovered), then an older one replayed after it, then one outside the clock window; both
/// dropped and counted by `browser` within `wait` each. Returns the publisher (its records
/// linger until it is dropped).
fn replayed_and_stale_are_dropped(
    browser: &Browser,
    rep: &KeyPair,
    wait: Duration,
) -> ServiceDaemon {
    let raw = ServiceDaemon::new().unwrap();
    raw.disable_interface(IfKind::All).unwrap();
    raw.enable_interface(IfKind::LoopbackV4).unwrap();
    let sign = |ts: u64, seq: u64| {
        Announcement {
            node_id: "rep".into(),
            port: 7100,
            addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            mflops: 10,
            free_slots: 1,
            total_slots: 1,
            groups: vec![],
            timestamp_ms: ts,
            seq,
        }
        .to_txt(|m| rep.sign(m))
        .unwrap()
    };
    let t = rjs_wire::announce::unix_ms_now();
    // An older announcement, captured before (e.g. on another link) and replayed after a
    // newer one was accepted. (Re-sending a TXT record the browser's mDNS cache still holds
    // produces no event at all, which is harmless; the exact-replay case is covered by the
    // NodeTable unit test in src/discovery.rs.)
    let old = sign(t - 1000, 4);
    publish_raw(&raw, "rep", &sign(t, 5));
    wait_for("node rep", wait, || find(&browser.nodes(), "rep"));
    // Wait > 1 s: records younger than 1 s survive a cache flush (RFC 6762 10.2).
    std::thread::sleep(Duration::from_millis(1100));
    publish_raw(&raw, "rep", &old);
    wait_for("replay drop", wait, || {
        (browser.drops().replay >= 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1100));
    publish_raw(
        &raw,
        "rep",
        &sign(rjs_wire::announce::unix_ms_now() - 60_000, 99),
    );
    wait_for("stale drop", wait, || {
        (browser.drops().stale >= 1).then_some(())
    });
    raw
}

#[test]
fn discovery_in_private_netns() {
    if !netns::isolated_child("discovery_in_private_netns", Duration::from_secs(90)) {
        return;
    }
    let good = Arc::new(KeyPair::from_secret([1; 32]));
    let mallory = Arc::new(KeyPair::from_secret([2; 32]));
    let rep = KeyPair::from_secret([3; 32]);
    let (good_pk, rep_pk) = (good.public(), rep.public());
    let keys = move |id: &str| match id {
        "good" => Some(good_pk),
        "rep" => Some(rep_pk),
        _ => None,
    };
    let browser = Browser::start(
        DiscoveryConfig {
            interfaces: Some(vec![IfKind::LoopbackV4]),
            ..DiscoveryConfig::with_interval(INTERVAL)
        },
        Arc::new(keys),
    )
    .unwrap();
    let wait = Duration::from_secs(10);

    // 1. A signed announcement from a known key is discovered with its fields.
    let free = Arc::new(AtomicU32::new(2));
    let f = free.clone();
    let good_ann = Announcer::start(
        config("good", 7001),
        good.clone(),
        Arc::new(move || f.load(Ordering::SeqCst)),
    )
    .unwrap();
    let n = wait_for("node good", wait, || find(&browser.nodes(), "good"));
    assert_eq!(
        (n.port, n.mflops, n.free_slots, n.total_slots),
        (7001, 1500, 2, 2)
    );
    assert_eq!(
        n.groups,
        vec!["/compute".to_owned(), "/compute/fast".to_owned()]
    );
    assert!(
        n.addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "addresses {:?}",
        n.addresses
    );
    assert!(n.age_ms <= 3 * INTERVAL.as_millis() as u64);
    // Renewals carry the current free slots.
    free.store(1, Ordering::SeqCst);
    wait_for("free slots update", wait, || {
        find(&browser.nodes(), "good").filter(|n| n.free_slots == 1)
    });

    // 2. A forged announcement (unknown key) is dropped and counted.
    let forged = Announcer::start(config("mallory", 7002), mallory, Arc::new(|| 2)).unwrap();
    wait_for("unknown-key drop", wait, || {
        (browser.drops().unknown_key >= 1).then_some(())
    });
    assert!(find(&browser.nodes(), "mallory").is_none());
    forged.shutdown();

    // 3. A replayed old announcement, and one outside the clock window, are dropped.
    let raw = replayed_and_stale_are_dropped(&browser, &rep, wait);

    // 4. A node that stops announcing is dropped after the TTL (3 intervals), although its
    //    mDNS records linger: "rep" is no longer renewed; "good" still is.
    let ttl = 3 * INTERVAL;
    wait_for(
        "rep's lease to expire",
        ttl + Duration::from_secs(2),
        || find(&browser.nodes(), "rep").is_none().then_some(()),
    );
    assert!(
        find(&browser.nodes(), "good").is_some(),
        "good kept renewing"
    );
    drop(raw);
    std::thread::sleep(ttl * 2);
    assert!(
        find(&browser.nodes(), "good").is_some(),
        "a renewing node outlives several TTLs"
    );
    let stopped = Instant::now();
    good_ann.shutdown();
    wait_for(
        "good's lease to expire",
        ttl + Duration::from_secs(1),
        || find(&browser.nodes(), "good").is_none().then_some(()),
    );
    let took = stopped.elapsed();
    assert!(
        took <= ttl + Duration::from_millis(500),
        "removed after {took:?}"
    );
    let d = browser.drops();
    eprintln!("drops: {d:?}");
    assert_eq!(d.bad_signature, 0);
    browser.shutdown();
}
