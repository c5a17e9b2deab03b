//! The compute node's job server through its real binary (`rjs-compute serve`): mutual TLS on
//! loopback with a cluster CA made here, the framed protocol of `docs/compute-protocol.md`,
//! sample bundles (`target/rjs-samples/<job>`, built by `samples/build.sh`) signed by test
//! authors.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rjs_e2e::node::{ComputeNode, NodeSetup, compute};
use rjs_e2e::pki::{Ca, Leaf, client_tls};
use rjs_e2e::*;
use rjs_signer::KeyPair;
use rjs_signer::answer::{AnswerLimits, Ending, LimitKind, VerifiedAnswer, verify_answer};
use rjs_wire::node::{FrameError, FromNode, RefusalCode, ToNode};
use rjs_wire::node::{read_frame, read_msg, write_frame, write_msg};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Bound on every single protocol step of these tests (the protocol's own deadlines are
/// longer; a healthy node answers in well under this).
const STEP: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// The node process

/// A node of its own cluster (a fresh CA) and that cluster's lookup certificate.
struct Node {
    node: ComputeNode,
    ca: Ca,
    lookup: Leaf,
}

impl std::ops::Deref for Node {
    type Target = ComputeNode;
    fn deref(&self) -> &ComputeNode {
        &self.node
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut ComputeNode {
        &mut self.node
    }
}

impl Node {
    fn start(setup: NodeSetup<'_>) -> Result<Node> {
        let ca = Ca::new("RJS test cluster CA");
        let lookup = ca.client_cert("lookup-1");
        let node = ComputeNode::start(&ca, &ca.node_cert(), setup)?;
        Ok(Node { node, ca, lookup })
    }

    /// A node trusting `author`.
    fn trusting(author: &KeyPair) -> Node {
        Node::start(NodeSetup {
            trusted: &[author],
            ..Default::default()
        })
        .unwrap()
    }

    /// A node started with `extra` flags besides those of [`ComputeNode::start`].
    fn start_with(setup: NodeSetup<'_>, extra: &[&str]) -> Result<Node> {
        Node::start(NodeSetup {
            extra_args: extra,
            ..setup
        })
    }

    /// A connection presenting the node's cluster's lookup certificate.
    async fn connect(&self) -> Result<Conn> {
        Conn::connect(self.addr, client_tls(&self.ca, Some(&self.lookup))).await
    }

    fn trust(&self, args: &[&str]) -> Result<String> {
        compute(&self.data, &[&["trust"], args].concat())
    }

    /// What tasks left in the sandbox's scratch directory: its entries, and inside a slot's
    /// own `out/` directory (`slot-<i>`, kept between tasks and emptied after each) theirs.
    fn scratch_entries(&self) -> Vec<String> {
        rjs_e2e::node::scratch_left(&self.data)
    }

    fn compiled_modules(&self) -> usize {
        rjs_e2e::node::compiled_modules(&self.data)
    }

    fn cached(&self, sha: &str) -> bool {
        self.data
            .join("bundles")
            .join(format!("{sha}.rjs"))
            .is_file()
    }
}

// ---------------------------------------------------------------------------------------
// Bundles

// ---------------------------------------------------------------------------------------
// The lookup side of the protocol

struct Conn {
    s: TlsStream<TcpStream>,
}

/// What became of an offer.
#[derive(Debug)]
struct Offered {
    /// The node asked for the bundle (`send-bundle`).
    asked: bool,
    /// `accepted` or `refused`.
    decision: FromNode,
}

impl Offered {
    fn accepted(&self) -> bool {
        self.decision == FromNode::Accepted
    }

    /// The refusal code and reason; panics on anything else.
    fn refused(&self) -> (RefusalCode, &str) {
        match &self.decision {
            FromNode::Refused { code, reason } => (*code, reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

/// The answer message and its archive.
struct Answered {
    outcome: String,
    archive: Vec<u8>,
}

impl Conn {
    async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Conn> {
        let tcp = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("127.0.0.1")?;
        let s = tokio::time::timeout(STEP, TlsConnector::from(tls).connect(name, tcp))
            .await
            .context("TLS handshake timed out")??;
        Ok(Conn { s })
    }

    async fn send(&mut self, msg: &ToNode) -> Result<(), FrameError> {
        write_msg(&mut self.s, msg, STEP).await
    }

    async fn recv(&mut self) -> Result<FromNode, FrameError> {
        read_msg(&mut self.s, STEP).await
    }

    /// Offers task `task` of `bundle` announced as `sha`/`size`; sends `bundle` if asked.
    async fn offer_as(
        &mut self,
        bundle: &[u8],
        sha: &str,
        size: u64,
        task: u32,
        job_id: i64,
    ) -> Result<Offered> {
        self.send(&ToNode::Offer {
            bundle_sha256: sha.to_owned(),
            bundle_size: size,
            task,
            job_id,
        })
        .await?;
        let mut asked = false;
        let mut msg = self.recv().await.context("waiting for the node's reply")?;
        if msg == FromNode::SendBundle {
            asked = true;
            write_frame(&mut self.s, bundle, STEP)
                .await
                .context("sending the bundle")?;
            msg = self.recv().await.context("waiting for the decision")?;
        }
        match msg {
            FromNode::Accepted | FromNode::Refused { .. } => Ok(Offered {
                asked,
                decision: msg,
            }),
            other => bail!("expected a decision, got {other:?}"),
        }
    }

    /// [`Conn::offer`] within 30 s (`what` names it if not).
    async fn offer_within(&mut self, what: &str, bundle: &[u8], task: u32, job_id: i64) -> Offered {
        bounded(what, 30, self.offer(bundle, task, job_id))
            .await
            .unwrap()
    }

    async fn offer(&mut self, bundle: &[u8], task: u32, job_id: i64) -> Result<Offered> {
        self.offer_as(
            bundle,
            &sha256_hex(bundle),
            bundle.len() as u64,
            task,
            job_id,
        )
        .await
    }

    /// Reads the answer message and the archive that follows it.
    async fn answer(&mut self) -> Result<Answered> {
        match self.recv().await.context("waiting for the answer")? {
            FromNode::Answer { outcome, size } => {
                let archive = read_frame(&mut self.s, size, STEP)
                    .await
                    .context("reading the answer archive")?;
                assert_eq!(archive.len() as u64, size, "announced answer size");
                Ok(Answered { outcome, archive })
            }
            other => bail!("expected an answer, got {other:?}"),
        }
    }

    /// Offer, expect `accepted`, read the answer.
    async fn run(&mut self, bundle: &[u8], task: u32, job_id: i64) -> Result<(Offered, Answered)> {
        let offered = self.offer(bundle, task, job_id).await?;
        if !offered.accepted() {
            bail!("job {job_id} not accepted: {:?}", offered.decision);
        }
        Ok((offered, self.answer().await?))
    }

    async fn ping(&mut self) -> Result<()> {
        self.send(&ToNode::Ping).await?;
        match self.recv().await? {
            FromNode::Pong => Ok(()),
            other => bail!("expected pong, got {other:?}"),
        }
    }

    /// Sends `frame` as a control frame; expects a `bad-request` refusal, then the end of the
    /// connection.
    async fn expect_bad_request_then_closed(&mut self, frame: &[u8]) {
        write_frame(&mut self.s, frame, STEP).await.unwrap();
        let msg = self.recv().await.unwrap();
        assert!(
            matches!(
                msg,
                FromNode::Refused {
                    code: RefusalCode::BadRequest,
                    ..
                }
            ),
            "{msg:?}"
        );
        self.expect_closed().await;
    }

    /// Expects the node to end the connection (after anything it still sends).
    async fn expect_closed(&mut self) {
        match read_frame(&mut self.s, 1 << 20, STEP).await {
            Err(FrameError::Closed) | Err(FrameError::Io(_)) => {}
            other => panic!("expected the node to close the connection, got {other:?}"),
        }
    }
}

/// Verifies an answer and checks it is signed by `node` for (`bundle`, `task`).
fn verified(node: &Node, answer: &Answered, bundle: &[u8], task: u32) -> VerifiedAnswer {
    let v = verify_answer(&answer.archive, &AnswerLimits::default())
        .unwrap_or_else(|e| panic!("answer refused: {}: {}", e.rule(), e));
    assert_eq!(
        v.public_key().to_base64(),
        node.public_key().to_base64(),
        "the answer is signed by the node's key"
    );
    let r = v.result();
    assert_eq!(r.bundle_sha256, sha256_hex(bundle));
    assert_eq!(r.task_index, task);
    assert_eq!(r.node_mflops, 1000, "the node's stored benchmark");
    assert_eq!(
        r.summary(),
        answer.outcome,
        "outcome line = ending and limits hit"
    );
    v
}

fn out_file<'a>(v: &'a VerifiedAnswer, path: &str) -> &'a [u8] {
    v.out_files()
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, d)| d.as_slice())
        .unwrap_or_else(|| {
            let have: Vec<_> = v.out_files().iter().map(|(p, _)| p).collect();
            panic!("no out/{path} in the answer; it holds {have:?}")
        })
}

/// The native build of the Mandelbrot sample renders task `task` of 8.
fn native_tile(task: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(bin("mandelbrot"))
            .args(["1024", "1024", "1000"])
            .env("RJS_TASK_INDEX", task.to_string())
            .env("RJS_TASK_COUNT", "8")
            .current_dir(dir.path()),
    )
    .expect("native mandelbrot");
    std::fs::read(dir.path().join(format!("out/tile-{task}.png"))).unwrap()
}

// ---------------------------------------------------------------------------------------
// Tests

/// (1) A trusted job runs and its answer is the node's signed, faithful result; (2) the next
/// task of the same bundle is not sent again; the node stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_mandelbrot_runs_and_the_bundle_is_sent_once() {
    let author = KeyPair::generate();
    let mut node = Node::trusting(&author);
    let bundle = pack("mandelbrot", &author);
    let sha = sha256_hex(&bundle);
    let native = tokio::task::spawn_blocking(|| native_tile(5));

    let mut c = node.connect().await.unwrap();
    c.ping().await.unwrap();
    let (offered, answer) = bounded("task 5", 45, c.run(&bundle, 5, 101)).await.unwrap();
    assert!(offered.asked, "a new bundle is asked for");
    assert_eq!(answer.outcome, "exit 0");
    let v = verified(&node, &answer, &bundle, 5);
    let r = v.result();
    assert_eq!(r.ending, Ending::Exit { code: 0 });
    assert_eq!((r.job_name.as_str(), r.task_count), ("mandelbrot", 8));
    assert!(r.limits_hit.is_empty(), "{:?}", r.limits_hit);
    let tile = out_file(&v, "tile-5.png");
    assert!(tile.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(
        tile == native.await.unwrap().as_slice(),
        "the sandbox's tile 5 differs from the native render"
    );
    let stdout = String::from_utf8_lossy(v.stdout());
    assert!(stdout.contains("tile 5/8"), "stdout: {stdout}");
    assert!(node.cached(&sha), "the verified bundle is cached");

    // (2) Another task of the same bundle on the same connection: no send-bundle.
    let (offered, answer) = bounded("task 2", 45, c.run(&bundle, 2, 102)).await.unwrap();
    assert!(!offered.asked, "the node asked again for a bundle it has");
    assert_eq!(answer.outcome, "exit 0");
    let v = verified(&node, &answer, &bundle, 2);
    let tile2 = out_file(&v, "tile-2.png");
    assert!(tile2.starts_with(b"\x89PNG") && tile2 != tile);
    // Nothing of the tasks is left in the scratch directory.
    assert_eq!(node.scratch_entries(), Vec::<String>::new());

    // A new connection: the bundle is still not sent again.
    let mut c2 = node.connect().await.unwrap();
    let (offered, _) = bounded("task 7", 45, c2.run(&bundle, 7, 103))
        .await
        .unwrap();
    assert!(!offered.asked);
    drop((c, c2));
    assert_eq!(
        node.proc.terminate(Duration::from_secs(15)).unwrap(),
        Some(0),
        "the node exits 0 on SIGTERM"
    );
}

/// (3) A tampered bundle, offered under its true SHA-256, is refused `invalid-bundle` and
/// nothing runs; so is a good bundle offered under another hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_bundle_is_refused_and_nothing_runs() {
    let author = KeyPair::generate();
    let node = Node::trusting(&author);
    let good = pack("hello", &author);
    let mut tampered = good.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    let tampered_sha = sha256_hex(&tampered);

    let mut c = node.connect().await.unwrap();
    let offered = c.offer_within("tampered offer", &tampered, 0, 1).await;
    assert!(offered.asked);
    let (code, reason) = offered.refused();
    assert_eq!(code, RefusalCode::InvalidBundle, "{reason}");
    // No answer follows: the next message on the connection is the reply to a ping.
    c.ping().await.unwrap();
    assert!(
        !node.cached(&tampered_sha),
        "a refused bundle is not cached"
    );
    assert_eq!(node.scratch_entries(), Vec::<String>::new(), "nothing ran");
    assert_eq!(node.compiled_modules(), 0, "nothing was even compiled");

    // The good bundle under a hash that is not its own.
    let wrong = sha256_hex(b"some other bundle");
    let offered = c
        .offer_as(&good, &wrong, good.len() as u64, 0, 2)
        .await
        .unwrap();
    let (code, reason) = offered.refused();
    assert_eq!(code, RefusalCode::InvalidBundle);
    assert!(reason.contains(&wrong), "{reason}");
    assert!(!node.cached(&wrong) && !node.cached(&sha256_hex(&good)));
    c.ping().await.unwrap();

    // The same connection still runs the genuine bundle.
    let (_, answer) = bounded("hello", 30, c.run(&good, 0, 3)).await.unwrap();
    assert_eq!(answer.outcome, "exit 0");
    let v = verified(&node, &answer, &good, 0);
    assert_eq!(out_file(&v, "hello-0.txt"), b"hello, world from task 0/1\n");
    assert_eq!(node.scratch_entries(), Vec::<String>::new());
    assert_eq!(
        node.compiled_modules(),
        1,
        "the genuine job's module was compiled"
    );
}

/// (4) With no terminal attached an unknown author is refused `untrusted`; a blocked author
/// `blocked`, including one blocked while the node runs whose bundle is already cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_blocked_authors_are_refused() {
    let trusted = KeyPair::generate();
    let node = Node::trusting(&trusted);
    let mut c = node.connect().await.unwrap();

    let stranger = KeyPair::generate();
    let theirs = pack("hello", &stranger);
    let offered = c.offer_within("stranger", &theirs, 0, 1).await;
    let (code, reason) = offered.refused();
    assert_eq!(code, RefusalCode::Untrusted, "{reason}");
    assert!(reason.contains("no terminal"), "{reason}");
    // Refused before any of its code ran: the sandbox did not even compile its module.
    assert_eq!(node.compiled_modules(), 0, "the unknown author's module");
    assert_eq!(node.scratch_entries(), Vec::<String>::new());

    let blocked = KeyPair::generate();
    let fp = blocked.public().fingerprint().to_string();
    let out = node.trust(&["block", &fp]).unwrap();
    assert!(out.starts_with("blocked "), "{out}");
    let offered = c
        .offer_within("blocked", &pack("hello", &blocked), 0, 2)
        .await;
    let (code, reason) = offered.refused();
    assert_eq!(code, RefusalCode::Blocked, "{reason}");
    assert_eq!(node.compiled_modules(), 0, "the blocked author's module");
    assert_eq!(node.scratch_entries(), Vec::<String>::new());

    // A trusted author runs; blocked while the node runs, their cached bundle is refused.
    let mine = pack("hello", &trusted);
    let (_, answer) = bounded("trusted", 30, c.run(&mine, 0, 3)).await.unwrap();
    assert_eq!(answer.outcome, "exit 0");
    assert_eq!(node.compiled_modules(), 1, "what a job that runs leaves");
    let tfp = trusted.public().fingerprint().to_string();
    node.trust(&["block", &tfp]).unwrap();
    let offered = c.offer_within("now blocked", &mine, 0, 4).await;
    assert!(!offered.asked, "the bundle was cached");
    assert_eq!(offered.refused().0, RefusalCode::Blocked);
    assert_eq!(node.scratch_entries(), Vec::<String>::new());
    c.ping().await.unwrap();
}

/// (5) A job asking for more memory than the node allows is refused `over-limits`, before
/// the author is considered; a job within the limits runs on the same node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limits_is_refused() {
    let author = KeyPair::generate();
    let node = Node::start(NodeSetup {
        toml: Some("[limits]\nmax_memory_bytes = \"32M\"\n"),
        trusted: &[&author],
        ..Default::default()
    })
    .unwrap();
    let mut c = node.connect().await.unwrap();
    // mandelbrot asks for 64 MiB.
    let big = pack("mandelbrot", &author);
    let offered = c.offer_within("mandelbrot", &big, 0, 1).await;
    let (code, reason) = offered.refused();
    assert_eq!(code, RefusalCode::OverLimits, "{reason}");
    assert!(reason.contains("memory"), "{reason}");
    // Limits are checked before trust: an unknown author gets over-limits, not untrusted.
    let unknown = pack("mandelbrot", &KeyPair::generate());
    let offered = c.offer_within("unknown", &unknown, 0, 2).await;
    assert_eq!(offered.refused().0, RefusalCode::OverLimits);
    assert_eq!(node.scratch_entries(), Vec::<String>::new());
    // hello asks for 16 MiB.
    let small = pack("hello", &author);
    let (_, answer) = bounded("hello", 30, c.run(&small, 0, 3)).await.unwrap();
    assert_eq!(answer.outcome, "exit 0");
    verified(&node, &answer, &small, 0);
}

/// (6) One slot, two concurrent offers: one runs, the other is refused `no-free-slot`; the
/// endless loop ends at its time limit with a signed answer, and the node then serves the
/// next job normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_refuses_a_second_job_until_the_first_ends() {
    let author = KeyPair::generate();
    let node = Node::start(NodeSetup {
        trusted: &[&author],
        slots: Some(1),
        ..Default::default()
    })
    .unwrap();
    let looping = pack("evil-loop", &author); // 2 s time limit
    let mut a = node.connect().await.unwrap();
    let mut b = node.connect().await.unwrap();
    let (ra, rb) = bounded("two offers", 30, async {
        tokio::join!(a.offer(&looping, 0, 1), b.offer(&looping, 0, 2))
    })
    .await;
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let (mut winner, loser) = match (ra.accepted(), rb.accepted()) {
        (true, false) => (a, (b, rb)),
        (false, true) => (b, (a, ra)),
        _ => panic!("exactly one offer must be accepted: {ra:?} / {rb:?}"),
    };
    let (mut loser, refused) = loser;
    let (code, reason) = refused.refused();
    assert_eq!(code, RefusalCode::NoFreeSlot, "{reason}");

    // While the loop runs, the other connection stays usable.
    loser.ping().await.unwrap();
    let t0 = std::time::Instant::now();
    let answer = bounded("the loop's answer", 30, winner.answer())
        .await
        .unwrap();
    assert_eq!(answer.outcome, "limit: time");
    let v = verified(&node, &answer, &looping, 0);
    let r = v.result();
    assert!(
        matches!(
            r.ending,
            Ending::Limit {
                limit: LimitKind::Time,
                ..
            }
        ),
        "{:?}",
        r.ending
    );
    assert!(r.limits_hit.contains(&LimitKind::Time));
    assert!(r.wall_ms >= 2000, "stopped after {} ms", r.wall_ms);
    assert!(t0.elapsed() < Duration::from_secs(20));

    // The slot is free again: the refused connection runs a job.
    let hello = pack("hello", &author);
    let (_, answer) = bounded("hello", 30, loser.run(&hello, 0, 3)).await.unwrap();
    assert_eq!(answer.outcome, "exit 0");
    verified(&node, &answer, &hello, 0);
    // And the loop's connection takes the next job too.
    let (_, answer) = bounded("hello again", 30, winner.run(&hello, 0, 4))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "exit 0");
    assert_eq!(node.scratch_entries(), Vec::<String>::new());
}

/// Connects with `tls`, offers a job and reads the node's first reply: for a client the node
/// does not accept, some step of this fails (no reply of the protocol ever arrives).
async fn first_reply(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    bundle: &[u8],
) -> Result<FromNode> {
    let mut c = Conn::connect(addr, tls).await?;
    c.send(&ToNode::Offer {
        bundle_sha256: sha256_hex(bundle),
        bundle_size: bundle.len() as u64,
        task: 0,
        job_id: 1,
    })
    .await?;
    Ok(c.recv().await?)
}

/// A client the node does not accept (`who`, presenting `tls`) gets no reply to an offer of
/// `bundle` ([`first_reply`] fails); prints how it failed.
async fn no_reply(addr: SocketAddr, who: &str, tls: Arc<rustls::ClientConfig>, bundle: &[u8]) {
    let e = bounded(who, 30, first_reply(addr, tls, bundle))
        .await
        .expect_err(&format!("{who} got a reply"));
    eprintln!("{who}: {e:#}");
}

/// (7) Mutual TLS: a client without a certificate, or with one from another CA, cannot get
/// a job run; a client that does not trust the node's CA does not talk to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_cluster_are_refused() {
    let author = KeyPair::generate();
    let node = Node::trusting(&author);
    let hello = pack("hello", &author);

    let anonymous = client_tls(&node.ca, None);
    no_reply(
        node.addr,
        "a client without a certificate",
        anonymous,
        &hello,
    )
    .await;

    let other = Ca::new("Some other CA");
    let outsider = other.client_cert("lookup-x");
    let foreign = client_tls(&node.ca, Some(&outsider));
    no_reply(
        node.addr,
        "a client with another CA's certificate",
        foreign,
        &hello,
    )
    .await;

    // The client side: a node whose certificate is not from the CA the client trusts.
    let e = bounded(
        "untrusted node",
        30,
        Conn::connect(node.addr, client_tls(&other, Some(&outsider))),
    )
    .await
    .err()
    .expect("connected to a node the client does not trust");
    eprintln!("untrusted node: {e:#}");

    // Another node of the cluster: its certificate is from the right CA, but a node may not
    // offer jobs (only the lookup, whose certificates name no node).
    let peer_node = node.ca.enrolled_node_cert("node-7");
    let peer = client_tls(&node.ca, Some(&peer_node));
    no_reply(node.addr, "a node's certificate", peer, &hello).await;
    // Nor may any other client certificate of the cluster CA that is not the lookup's, even
    // one with the lookup's common name.
    for cn in ["rjs-lookup", "panel"] {
        let other = client_tls(&node.ca, Some(&node.ca.other_client_cert(cn)));
        no_reply(
            node.addr,
            "another client certificate of the CA",
            other,
            &hello,
        )
        .await;
    }

    assert_eq!(node.scratch_entries(), Vec::<String>::new());
    // A cluster member still gets its job run.
    let mut c = node.connect().await.unwrap();
    let (_, answer) = bounded("hello", 30, c.run(&hello, 0, 2)).await.unwrap();
    assert_eq!(answer.outcome, "exit 0");
}

/// Connections held before authentication (issue 10, item 5): 300 idle sockets from one host
/// (more than the node's 256-connection limit) do not lock the lookup out, and the node
/// holds at most its per-source bound of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_a_lan_host_do_not_lock_the_lookup_out() {
    let author = KeyPair::generate();
    let node = Node::trusting(&author);
    let hello = pack("hello", &author);
    let attacker = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    let addr = node.addr;
    let flood = tokio::task::spawn_blocking(move || {
        rjs_harness::flood::idle_sockets(attacker, addr, 300).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(flood.connected(), 300);
    let mut c = bounded("connect during the flood", 5, node.connect())
        .await
        .unwrap();
    let (_, answer) = bounded("hello during the flood", 30, c.run(&hello, 0, 2))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "exit 0");
    let held = flood.still_open();
    let bound = rjs_wire::node::PRE_AUTH_LIMITS.per_source;
    assert!(held <= bound, "{held} idle sockets held (bound {bound})");
}

/// (8) Bad requests: each is refused or ends its connection, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_node_keeps_serving() {
    let author = KeyPair::generate();
    let node = Node::trusting(&author);
    let hello = pack("hello", &author);
    let sha = sha256_hex(&hello);
    // An idle connection held open through all of this is still served at the end.
    let mut idle = node.connect().await.unwrap();
    idle.ping().await.unwrap();

    let mut c = node.connect().await.unwrap();
    // An announced size over the node's limit (256 MiB): refused before any byte is sent.
    let offered = c
        .offer_as(&hello, &sha, 300 << 20, 0, 1)
        .await
        .expect("an oversized offer is answered");
    assert!(!offered.asked, "the node asked for a bundle over its limit");
    let (code, reason) = offered.refused();
    assert!(
        matches!(code, RefusalCode::InvalidBundle | RefusalCode::BadRequest),
        "{code:?}: {reason}"
    );
    c.ping().await.unwrap();
    // A hash that is not 64 lowercase hex digits.
    let offered = c
        .offer_as(&hello, &sha.to_uppercase(), hello.len() as u64, 0, 2)
        .await
        .unwrap();
    assert_eq!(offered.refused().0, RefusalCode::BadRequest);
    // A task the bundle does not have (hello has 1).
    let offered = c.offer(&hello, 1, 3).await.unwrap();
    let (code, reason) = offered.refused();
    assert_eq!(code, RefusalCode::BadRequest, "{reason}");
    // A data frame shorter than announced.
    let offered = c
        .offer_as(&hello[..100], &sha, hello.len() as u64, 0, 4)
        .await
        .unwrap();
    assert_eq!(offered.refused().0, RefusalCode::BadRequest);
    c.ping().await.unwrap();
    // An unknown message type: bad-request, then the connection ends.
    c.expect_bad_request_then_closed(br#"{"type":"launch","now":true}"#)
        .await;

    // Not JSON at all.
    let mut c = node.connect().await.unwrap();
    c.expect_bad_request_then_closed(b"\x00\x01garbage").await;

    // A control frame over 64 KiB: the connection ends.
    let mut c = node.connect().await.unwrap();
    c.s.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
    c.s.flush().await.unwrap();
    c.expect_closed().await;

    // A data frame longer than announced: the connection ends.
    let mut c = node.connect().await.unwrap();
    let mut longer = hello.clone();
    longer.extend_from_slice(b"trailing");
    let r = c.offer_as(&longer, &sha, hello.len() as u64, 0, 5).await;
    match r {
        Err(_) => {}
        Ok(o) => panic!("a data frame over its announced size was answered: {o:?}"),
    }

    // A client that connects and says nothing does not hold the node up; nor does one that
    // sends half a frame and disappears.
    let _silent = node.connect().await.unwrap();
    {
        let mut c = node.connect().await.unwrap();
        c.s.write_all(&[0, 0]).await.unwrap();
        c.s.flush().await.unwrap();
    }

    assert_eq!(node.scratch_entries(), Vec::<String>::new());
    // Nothing of the bad offers was cached.
    assert!(!node.cached(&sha));
    // The node still serves: the idle connection and a new one.
    idle.ping().await.unwrap();
    let (offered, answer) = bounded("hello", 30, idle.run(&hello, 0, 6)).await.unwrap();
    assert!(offered.asked);
    assert_eq!(answer.outcome, "exit 0");
    let mut fresh = node.connect().await.unwrap();
    let (offered, answer) = bounded("hello", 30, fresh.run(&hello, 0, 7)).await.unwrap();
    assert!(!offered.asked);
    assert_eq!(answer.outcome, "exit 0");
}

/// Writes a `/proc/loadavg`-style file (atomically: the node may be reading it).
fn set_load(path: &std::path::Path, load1: f64) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{load1:.2} 0.50 0.50 1/200 4242\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// (9) `--only-when-idle`: while the (fake) load average is high, jobs are refused
/// `not-idle` before anything runs, new bundles and bundles kept ready alike; once it drops,
/// they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_when_idle_refuses_jobs_while_the_pc_is_busy() {
    let author = KeyPair::generate();
    let load_dir = tempfile::tempdir().unwrap();
    let loadavg = load_dir.path().join("loadavg");
    // Far above 0.5 per core on any machine.
    set_load(&loadavg, 100_000.0);
    let node = Node::start_with(
        NodeSetup {
            trusted: &[&author],
            ..Default::default()
        },
        &[
            "--only-when-idle",
            "--loadavg-file",
            loadavg.to_str().unwrap(),
        ],
    )
    .unwrap();
    let hello = pack("hello", &author);
    let mut c = node.connect().await.unwrap();

    let offered = c.offer_within("busy", &hello, 0, 1).await;
    let (code, reason) = offered.refused();
    assert_eq!(code, RefusalCode::NotIdle, "{reason}");
    assert!(
        reason.starts_with("not idle: load 100000.00 with 0 own jobs (threshold "),
        "{reason}"
    );
    assert_eq!(node.compiled_modules(), 0, "nothing ran");
    assert_eq!(node.scratch_entries(), Vec::<String>::new());

    // The owner stops working: the same connection's next offer runs.
    set_load(&loadavg, 0.0);
    let (_, answer) = bounded("idle", 30, c.run(&hello, 0, 2)).await.unwrap();
    assert_eq!(answer.outcome, "exit 0");
    verified(&node, &answer, &hello, 0);

    // Busy again: the bundle now kept ready in memory is refused just the same.
    set_load(&loadavg, 100_000.0);
    let offered = c.offer_within("busy again", &hello, 0, 3).await;
    assert!(!offered.asked, "the bundle is kept");
    assert_eq!(offered.refused().0, RefusalCode::NotIdle);
    // An unreadable load average counts as busy.
    std::fs::remove_file(&loadavg).unwrap();
    let offered = c.offer_within("no load", &hello, 0, 4).await;
    let (code, reason) = offered.refused();
    assert_eq!(code, RefusalCode::NotIdle);
    assert!(reason.contains("cannot read the load average"), "{reason}");
    set_load(&loadavg, 0.0);
    let (_, answer) = bounded("idle again", 30, c.run(&hello, 0, 5))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "exit 0");
}

/// (10) Every read has a deadline: a client that stalls in the middle of a frame, or in the
/// TLS handshake, is disconnected once the node's timeout (here `--io-timeout 1s`, normally
/// 30 s and 10 s) has passed, while the node goes on serving others. A connection idle
/// between jobs is subject to the (longer) idle timeout only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_after_the_timeout() {
    let author = KeyPair::generate();
    let node = Node::start_with(
        NodeSetup {
            trusted: &[&author],
            ..Default::default()
        },
        &["--io-timeout", "1s"],
    )
    .unwrap();
    let hello = pack("hello", &author);
    let mut idle = node.connect().await.unwrap();
    idle.ping().await.unwrap();

    // Half of a frame's length prefix, then nothing.
    let mut stalled = node.connect().await.unwrap();
    stalled.ping().await.unwrap();
    stalled.s.write_all(&[0, 0]).await.unwrap();
    stalled.s.flush().await.unwrap();
    let t0 = std::time::Instant::now();
    // A TCP connection that never starts its TLS handshake.
    let mut raw = TcpStream::connect(node.addr).await.unwrap();

    // Meanwhile the node serves another client.
    let mut other = node.connect().await.unwrap();
    let (_, answer) = bounded("hello", 30, other.run(&hello, 0, 1)).await.unwrap();
    assert_eq!(answer.outcome, "exit 0");

    bounded("the stalled frame", 20, stalled.expect_closed()).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the timeout"
    );
    assert!(waited < Duration::from_secs(15), "closed after {waited:?}");
    let mut buf = [0u8; 64];
    let n = bounded("the silent TCP client", 20, async {
        tokio::io::AsyncReadExt::read(&mut raw, &mut buf).await
    })
    .await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    // Idle between jobs for longer than the I/O timeout: still served.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    idle.ping().await.unwrap();
    let (_, answer) = bounded("hello again", 30, idle.run(&hello, 0, 2))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "exit 0");
    let mut fresh = node.connect().await.unwrap();
    fresh.ping().await.unwrap();
}

/// The nice value of `pid` (field 19 of `/proc/<pid>/stat`).
fn nice_of(pid: u32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(16).unwrap().parse().unwrap()
}

/// The node's worker processes (its children).
fn workers_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// Jobs run below the owner's programs: workers at nice 10 by default, `--job-nice` else;
/// the node itself keeps its own priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_at_a_lower_cpu_priority() {
    let author = KeyPair::generate();
    for (extra, want) in [(&[][..], 10), (&["--job-nice", "19"][..], 19)] {
        let node = Node::start_with(
            NodeSetup {
                trusted: &[&author],
                slots: Some(2),
                ..Default::default()
            },
            extra,
        )
        .unwrap();
        let hello = pack("hello", &author);
        let mut c = node.connect().await.unwrap();
        let (_, answer) = bounded("hello", 60, c.run(&hello, 0, 1)).await.unwrap();
        assert_eq!(answer.outcome, "exit 0");
        let pid = node.proc.child.id();
        let workers = workers_of(pid);
        assert_eq!(workers.len(), 2, "one worker per slot");
        for w in workers {
            assert_eq!(nice_of(w), want, "worker {w} with {extra:?}");
        }
        assert_eq!(nice_of(pid), nice_of(std::process::id()), "the node itself");
    }
}
