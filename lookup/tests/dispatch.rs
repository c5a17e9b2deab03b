//! Dispatch: the scheduler's order and explanations (pure), then real `rjs-compute serve`
//! nodes on loopback with one cluster CA made here: refusals go to the next node, a job no
//! node will take is unplaced with the reason, a node killed mid-job is reported lost.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rjs_e2e::node::{ComputeNode, NodeSetup};
use rjs_e2e::pki::Ca;
use rjs_e2e::{bounded, pack, sha256_hex};
use rjs_lookup::discovery::NodeView;
use rjs_lookup::dispatch::{
    DispatchError, JobOffer, NodeClient, NodeId, NodePool, Placement, Scheduler, Why, dispatch_job,
};
use rjs_signer::KeyPair;
use rjs_signer::answer::{AnswerLimits, verify_answer};
use rjs_wire::node::RefusalCode;

// ---------------------------------------------------------------------------------------
// Scheduler (pure)

fn view(id: &str, mflops: u64, free: u32, groups: &[&str]) -> NodeView {
    NodeView {
        node_id: id.into(),
        addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        port: 1,
        mflops,
        free_slots: free,
        total_slots: free.max(1),
        groups: groups.iter().map(|s| s.to_string()).collect(),
        age_ms: 0,
    }
}

fn set(ids: &[&str]) -> HashSet<NodeId> {
    ids.iter().map(|&s| s.into()).collect()
}

/// The id of the node the scheduler picks, skipping `refused`.
fn picked(group: &str, nodes: &[NodeView], refused: &[&str]) -> Option<String> {
    Scheduler
        .pick(group, nodes, &set(refused))
        .map(|id| id.as_str().to_owned())
}

/// Refused by `n` nodes, each because it does not trust the author.
fn untrusted_by(n: usize) -> Why {
    Why::RefusedBy {
        untrusted: n,
        blocked: 0,
        over_limits: 0,
        other: 0,
    }
}

#[test]
fn fastest_serving_free_node_first() {
    let nodes = vec![
        view("slow", 100, 1, &["/compute"]),
        view("fast", 900, 2, &["/compute"]),
        view("mid", 500, 1, &["/compute/gpu"]),
        view("other", 5000, 1, &["/render"]),
        view("busy", 9000, 0, &["/compute"]),
    ];
    // A node serves jobs of its group and of the groups above it.
    assert_eq!(
        Scheduler.order("/compute", &nodes, &set(&[])),
        vec!["fast", "mid", "slow"]
    );
    assert_eq!(
        Scheduler.order("/compute/gpu", &nodes, &set(&[])),
        vec!["mid"]
    );
    assert_eq!(
        Scheduler.order("/", &nodes, &set(&[])),
        vec!["other", "fast", "mid", "slow"]
    );
    assert_eq!(picked("/compute", &nodes, &[]).as_deref(), Some("fast"));
    // Refused nodes are skipped.
    assert_eq!(
        picked("/compute", &nodes, &["fast"]).as_deref(),
        Some("mid")
    );
    assert_eq!(picked("/compute", &nodes, &["fast", "mid", "slow"]), None);
    assert_eq!(picked("/nothing", &nodes, &[]), None);
    assert_eq!(Scheduler.why("/compute", &nodes, &HashMap::new()), None);
}

#[test]
fn why_a_job_is_not_running() {
    // Two busy nodes serve /compute; one free node serves /render.
    let nodes = [
        ("a", 100, 0, "/compute"),
        ("b", 200, 0, "/compute"),
        ("c", 300, 1, "/render"),
    ]
    .map(|(id, mflops, free, group)| view(id, mflops, free, &[group]))
    .to_vec();
    let why = Scheduler.why("/nothing", &nodes, &HashMap::new()).unwrap();
    assert_eq!(why, Why::NoNodeInGroup);
    assert_eq!(why.sentence(), "No node serves this job's group.");

    let why = Scheduler.why("/compute", &nodes, &HashMap::new()).unwrap();
    assert_eq!(why, Why::AllBusy { n: 2 });
    assert_eq!(
        why.to_string(),
        "All 2 nodes serving this job's group are busy: it waits for a free slot."
    );
    // One refused, the other busy: busy.
    let refusals = HashMap::from([("a".into(), RefusalCode::Untrusted)]);
    assert_eq!(
        Scheduler.why("/compute", &nodes, &refusals),
        Some(Why::AllBusy { n: 1 })
    );
    assert!(
        Why::AllBusy { n: 1 }
            .sentence()
            .starts_with("All 1 node serving this job's group is busy")
    );

    let refusals = HashMap::from([
        ("a".into(), RefusalCode::Untrusted),
        ("b".into(), RefusalCode::Untrusted),
    ]);
    let why = Scheduler.why("/compute", &nodes, &refusals).unwrap();
    assert_eq!(why, untrusted_by(2));
    assert_eq!(
        why.sentence(),
        "Refused by 2 nodes: 2 nodes because the author is untrusted."
    );
    let mixed = Why::RefusedBy {
        untrusted: 1,
        blocked: 1,
        over_limits: 1,
        other: 2,
    };
    assert_eq!(
        mixed.sentence(),
        "Refused by 5 nodes: 1 node because the author is untrusted, 1 node because the owner \
         blocked the author, 1 node because the job exceeds their limits, 2 nodes for other \
         reasons."
    );
}

// ---------------------------------------------------------------------------------------
// Real nodes

fn offer(job: &str, key: &KeyPair, job_id: i64) -> JobOffer {
    let bundle = pack(job, key);
    JobOffer {
        job_id,
        bundle_sha256: sha256_hex(&bundle),
        bundle: Arc::new(bundle),
        task: 0,
    }
}

/// `rjs-compute serve` on 127.0.0.1 named `id` at `mflops`, trusting `trusted`; killed when
/// dropped.
fn start_node(ca: &Ca, id: &str, mflops: u64, trusted: Option<&KeyPair>) -> ComputeNode {
    ComputeNode::start(
        ca,
        &ca.node_cert_for(id),
        NodeSetup {
            trusted: trusted.as_slice(),
            node_id: Some(id),
            mflops: Some(mflops),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("starting node {id}: {e:#}"))
}

/// How discovery sees a node of [`start_node`]: one free slot, group `/compute`, at its
/// address.
fn view_of(node: &ComputeNode) -> NodeView {
    let id = node.node_id.as_deref().expect("a node started with an id");
    NodeView {
        addresses: vec![node.addr.ip()],
        port: node.addr.port(),
        ..view(id, node.mflops, 1, &["/compute"])
    }
}

/// `dispatch_job` for group `/compute` with a task limit of 10 s, bounded by 60 s.
async fn dispatch(
    what: &str,
    pool: &mut NodePool,
    nodes: &[NodeView],
    job: &JobOffer,
    refusals: &mut HashMap<NodeId, RefusalCode>,
) -> Placement {
    dispatch_limited(what, pool, nodes, job, Duration::from_secs(10), refusals).await
}

/// `dispatch_job` for group `/compute` with task limit `limit`, bounded by 60 s.
async fn dispatch_limited(
    what: &str,
    pool: &mut NodePool,
    nodes: &[NodeView],
    job: &JobOffer,
    limit: Duration,
    refusals: &mut HashMap<NodeId, RefusalCode>,
) -> Placement {
    bounded(
        what,
        60,
        dispatch_job(&Scheduler, pool, nodes, job, "/compute", limit, refusals),
    )
    .await
}

/// The faster node does not trust the author and refuses; the job runs on the slower one,
/// which trusts them; its answer verifies. With neither trusting, the job is unplaced and the
/// reason says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_by_the_fastest_then_runs_on_the_trusting_node() {
    let author = KeyPair::generate();
    let ca = Ca::new("RJS dispatch test CA");
    let fast = start_node(&ca, "fast-untrusting", 5000, None);
    let slow = start_node(&ca, "slow-trusting", 1000, Some(&author));
    let nodes = vec![view_of(&slow), view_of(&fast)];
    assert_eq!(
        picked("/compute", &nodes, &[]).as_deref(),
        Some("fast-untrusting")
    );
    let mut pool = NodePool::new(ca.lookup_tls());
    let job = offer("hello", &author, 1);
    let mut refusals = HashMap::new();
    let placed = dispatch("dispatch", &mut pool, &nodes, &job, &mut refusals).await;
    assert_eq!(
        refusals,
        HashMap::from([("fast-untrusting".into(), RefusalCode::Untrusted)])
    );
    let Placement::Ran {
        node,
        outcome,
        answer,
    } = placed
    else {
        panic!("expected the job to run, got {placed:?}");
    };
    assert_eq!(node, "slow-trusting");
    assert_eq!(outcome, "exit 0");
    let v = verify_answer(&answer, &AnswerLimits::default())
        .unwrap_or_else(|e| panic!("answer refused: {}: {e}", e.rule()));
    assert_eq!(v.public_key().to_base64(), slow.public_key().to_base64());
    let out = v
        .out_files()
        .iter()
        .find(|(p, _)| p == "hello-0.txt")
        .map(|(_, d)| d.as_slice());
    assert_eq!(out, Some(&b"hello, world from task 0/1\n"[..]));

    // The connections are kept: the next job (cached bundle) reuses them.
    let again = dispatch(
        "second dispatch",
        &mut pool,
        &nodes,
        &JobOffer {
            job_id: 2,
            ..job.clone()
        },
        &mut HashMap::from([("fast-untrusting".into(), RefusalCode::Untrusted)]),
    )
    .await;
    assert!(
        matches!(&again, Placement::Ran { node, .. } if node == "slow-trusting"),
        "{again:?}"
    );

    // An author neither node trusts: unplaced, refused by both for that reason.
    let stranger = KeyPair::generate();
    let job = offer("hello", &stranger, 3);
    let mut refusals = HashMap::new();
    let placed = dispatch(
        "dispatch of an untrusted job",
        &mut pool,
        &nodes,
        &job,
        &mut refusals,
    )
    .await;
    let Placement::Unplaced(why) = placed else {
        panic!("expected the job to be unplaced, got {placed:?}");
    };
    assert_eq!(why, untrusted_by(2));
    assert!(
        why.sentence()
            .contains("2 nodes because the author is untrusted"),
        "{why}"
    );
    assert_eq!(refusals.len(), 2);
}

/// A node killed (SIGKILL) while running a job: the dispatcher reports it lost; then, the
/// node being unreachable, the job is unplaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_job_is_lost() {
    let author = KeyPair::generate();
    let ca = Ca::new("RJS dispatch test CA");
    let mut node = start_node(&ca, "doomed", 1000, Some(&author));
    let job = offer("evil-loop", &author, 7); // 2 s time limit
    let nodes = [view_of(&node)];
    let mut pool = NodePool::new(ca.lookup_tls());
    // Each dispatch with a 2 s task limit and no refusals yet.
    let mut dispatch_2s = async |what: &str| {
        let limit = Duration::from_secs(2);
        dispatch_limited(what, &mut pool, &nodes, &job, limit, &mut HashMap::new()).await
    };
    let pid = node.proc.child.id();
    let killer = std::thread::spawn(move || {
        // While the loop runs (it would end 2 s after it was accepted).
        std::thread::sleep(Duration::from_millis(1200));
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let t0 = std::time::Instant::now();
    let placed = dispatch_2s("the killed node's job").await;
    killer.join().unwrap();
    let _ = node.proc.child.wait();
    assert_eq!(placed, Placement::NodeLost("doomed".into()));
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    // A client to the dead node: unreachable, not lost (nothing was offered).
    let mut client = NodeClient::new("doomed", node.addr, ca.lookup_tls());
    let r = bounded(
        "connecting to a dead node",
        30,
        client.run_job(&job, Duration::from_secs(2)),
    )
    .await;
    assert!(matches!(r, Err(DispatchError::Unreachable { .. })), "{r:?}");
    assert!(!client.connected());
    let placed = dispatch_2s("dispatch to a dead node").await;
    assert!(matches!(placed, Placement::Unplaced(_)), "{placed:?}");
}
