//! The node's job server: mutual TLS (tokio-rustls) and the framed protocol of
//! `docs/compute-protocol.md` (`rjs_wire::node`). Every read and write has a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rjs_wire::node::{
    self, CONTROL_TIMEOUT, FrameError, FromNode, IDLE_TIMEOUT, PRE_AUTH_LIMITS, PROGRESS_INTERVAL,
    RefusalCode, ToNode, read_frame, read_msg_idle, write_msg,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use rjs_wire::gate::Gate;
use rjs_wire::ids::JobId;
use rjs_wire::shutdown::accept_or_stop;

use crate::node::Node;
use crate::sandbox::TaskPhase;
use rjs_signer::bundle::is_sha256_hex as valid_sha;

/// Time a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers up to this size are sent with their `answer` message in one write.
const COALESCE_ANSWER_BYTES: usize = 256 << 10;
/// Most authenticated connections served at once (each holds at most one job).
pub const MAX_CONNECTIONS: usize = 256;

/// The job server's deadlines. Every network read and write has one; a connection that
/// misses one is closed (the other connections are not affected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A client's TLS handshake, from the TCP accept [default: [`HANDSHAKE_TIMEOUT`], 5 s].
    pub handshake: Duration,
    /// Between jobs: until the first byte of the next message [default: [`IDLE_TIMEOUT`],
    /// 5 min].
    pub idle: Duration,
    /// One control frame, from its first byte to its last, and every write of one
    /// [default: [`CONTROL_TIMEOUT`], 30 s]; a data frame (bundle, answer) has this plus
    /// the protocol's allowance per MiB ([`node::data_timeout`]).
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: HANDSHAKE_TIMEOUT,
            idle: IDLE_TIMEOUT,
            io: CONTROL_TIMEOUT,
        }
    }
}

impl Timeouts {
    /// `handshake` and `io` both `step` (the hidden `serve --io-timeout`, for tests).
    pub fn with_io(step: Duration) -> Timeouts {
        Timeouts {
            handshake: step,
            io: step,
            ..Timeouts::default()
        }
    }

    /// Time to transfer a data frame of `bytes`.
    fn data(&self, bytes: u64) -> Duration {
        self.io + node::data_timeout(bytes).saturating_sub(node::data_timeout(0))
    }
}

/// Serves until `shutdown` completes; then stops accepting and returns (jobs in flight are
/// abandoned with their connections; the lookup reports them).
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(node, listener, tls, Timeouts::default(), shutdown).await
}

/// [`serve`] with other deadlines.
pub async fn serve_with(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let gate = Gate::new(PRE_AUTH_LIMITS);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    while let Some((tcp, peer)) = accept_or_stop(&listener, shutdown.as_mut()).await {
        // Not yet authenticated: bounded per source and in all, apart from the lookup's.
        let Some(pass) = gate.admit(peer, "connections waiting to authenticate") else {
            continue;
        };
        let (acceptor, node, permits) = (acceptor.clone(), node.clone(), permits.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(timeouts.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            drop(pass);
            // The cluster CA also issues node certificates (which can authenticate as a
            // client) and may issue others: only the lookup's client identity offers jobs.
            let client = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            if !client.is_some_and(|c| rjs_wire::pki::is_lookup_client(c)) {
                let node = client.and_then(|c| rjs_wire::pki::node_id_of(c));
                tracing::warn!(%peer, node = ?node, "refused: only the lookup's client certificate may offer jobs");
                return;
            }
            // Only authenticated connections count against the connection limit.
            let Ok(_permit) = permits.try_acquire_owned() else {
                tracing::warn!(%peer, "too many connections: closing");
                return;
            };
            if let Err(e) = handle(&node, tls, peer, &timeouts).await {
                tracing::info!(%peer, error = %rjs_cmd::chain(&e), "connection ended");
            }
        });
    }
    Ok(())
}

async fn refuse<S: AsyncWrite + Unpin>(
    s: &mut S,
    code: RefusalCode,
    reason: String,
    t: &Timeouts,
) -> Result<(), FrameError> {
    write_msg(s, &FromNode::Refused { code, reason }, t.io).await
}

/// The next request on a connection: its first byte may take up to `t.idle` (the next job
/// may be long in coming), the whole frame then up to `t.io`.
async fn read_request<S: AsyncRead + Unpin>(s: &mut S, t: &Timeouts) -> Result<ToNode, FrameError> {
    read_msg_idle(s, t.idle, t.io).await
}

/// One connection: jobs one after another until the client closes or breaks the protocol.
pub async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    node: &Node,
    mut s: S,
    peer: SocketAddr,
    t: &Timeouts,
) -> Result<(), FrameError> {
    let max_bundle = node.verify_limits.max_bundle_bytes;
    loop {
        let msg: ToNode = match read_request(&mut s, t).await {
            Ok(m) => m,
            Err(FrameError::Closed) => return Ok(()),
            Err(FrameError::Malformed(why)) => {
                refuse(
                    &mut s,
                    RefusalCode::BadRequest,
                    format!("malformed message: {why}"),
                    t,
                )
                .await?;
                return Err(FrameError::Malformed(why));
            }
            Err(e) => return Err(e),
        };
        let (sha, size, task, job) = match msg {
            ToNode::Ping => {
                write_msg(&mut s, &FromNode::Pong, t.io).await?;
                continue;
            }
            ToNode::Offer {
                bundle_sha256,
                bundle_size,
                task,
                job_id,
            } => (bundle_sha256, bundle_size, task, JobId::from(job_id)),
        };
        if !valid_sha(&sha) {
            refuse(
                &mut s,
                RefusalCode::BadRequest,
                "bundle_sha256 must be 64 lowercase hex digits".into(),
                t,
            )
            .await?;
            continue;
        }
        if size > max_bundle {
            refuse(
                &mut s,
                RefusalCode::InvalidBundle,
                format!("the bundle is {size} bytes; this node takes at most {max_bundle}"),
                t,
            )
            .await?;
            continue;
        }
        let offer = Offer {
            peer,
            job,
            task,
            bundle: &sha,
        };
        // A bundle kept ready in memory was verified when it was first admitted: only the
        // per-offer checks run (task, group, limits, trust, idle, slot).
        let admitted = if let Some(ready) = node.bundles.ready(&sha) {
            offer.log_offered();
            node.admit_ready(&ready, task).await
        } else {
            let bundle = match node.bundles.get(&sha, max_bundle) {
                Some(b) => b,
                None => {
                    write_msg(&mut s, &FromNode::SendBundle, t.io).await?;
                    let b = read_frame(&mut s, size, t.data(size)).await?;
                    if b.len() as u64 != size {
                        refuse(
                            &mut s,
                            RefusalCode::BadRequest,
                            format!("announced {size} bytes, sent {}", b.len()),
                            t,
                        )
                        .await?;
                        continue;
                    }
                    b
                }
            };
            offer.log_offered();
            node.admit(Arc::new(bundle), Some(&sha), task).await
        };
        run_admitted(node, &mut s, &offer, admitted, t).await?;
    }
}

/// One offer on a connection, as the log lines name it.
struct Offer<'a> {
    peer: SocketAddr,
    /// The lookup's id of the job.
    job: JobId,
    /// The task's index in the bundle.
    task: u32,
    /// The bundle id (hex).
    bundle: &'a str,
}

impl Offer<'_> {
    fn log_offered(&self) {
        let Offer {
            peer, job, task, ..
        } = self;
        tracing::info!(%peer, %job, task, bundle = %&self.bundle[..12], "job offered");
    }
}

/// Sends the node's decision and, for an admitted job, runs it and sends the answer.
async fn run_admitted<S: AsyncWrite + Unpin>(
    node: &Node,
    s: &mut S,
    offer: &Offer<'_>,
    admitted: Result<crate::node::Admitted, crate::node::Refusal>,
    t: &Timeouts,
) -> Result<(), FrameError> {
    let Offer {
        peer, job, task, ..
    } = offer;
    let admitted = match admitted {
        Ok(a) => a,
        Err(r) => {
            tracing::info!(%peer, %job, code = r.code.as_str(), reason = %r.reason, "job refused");
            return refuse(s, r.code, r.reason, t).await;
        }
    };
    write_msg(s, &FromNode::Accepted, t.io).await?;
    let signer = admitted.signer().to_owned();
    let (phase, watched) = tokio::sync::watch::channel(TaskPhase::Preparing);
    let execute = node.execute_watched(admitted, phase);
    let executed = tell_progress(node, s, execute, watched, t).await?;
    match executed {
        Ok(answer) => {
            tracing::info!(%peer, %job, task, outcome = %answer.outcome, %signer, "job done");
            write_answer(s, &answer.outcome, &answer.bytes, t).await
        }
        Err(e) => {
            tracing::error!(%peer, %job, error = %rjs_cmd::chain(&e), "could not build the answer");
            refuse(
                s,
                RefusalCode::Unavailable,
                format!("could not build the answer: {}", rjs_cmd::chain(&e)),
                t,
            )
            .await
        }
    }
}

/// Runs `execute` to its end while telling the lookup, every [`PROGRESS_INTERVAL`], that the
/// job's module is being compiled (and then, once, that the program runs), so that the lookup
/// waits for a long compilation instead of taking the node for lost.
async fn tell_progress<S: AsyncWrite + Unpin, T>(
    node: &Node,
    s: &mut S,
    execute: impl std::future::Future<Output = T>,
    mut watched: tokio::sync::watch::Receiver<TaskPhase>,
    t: &Timeouts,
) -> Result<T, FrameError> {
    tokio::pin!(execute);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + PROGRESS_INTERVAL,
        PROGRESS_INTERVAL,
    );
    let mut told_compiling = false;
    loop {
        tokio::select! {
            done = &mut execute => return Ok(done),
            _ = tick.tick() => {
                // Not marked seen: the move to `Running` is the `changed` arm's to tell.
                let phase = *watched.borrow();
                if let TaskPhase::Compiling { since, module_bytes } = phase {
                    let sandbox = &node.sandbox;
                    let msg = FromNode::Compiling {
                        elapsed_ms: millis(since.elapsed()),
                        module_bytes,
                        limit_ms: millis(sandbox.compile_timeout()),
                        estimate_ms: sandbox.compile_estimate(module_bytes).map(millis),
                    };
                    write_msg(s, &msg, t.io).await?;
                    told_compiling = true;
                }
            }
            changed = watched.changed(), if told_compiling => {
                if changed.is_err() || *watched.borrow_and_update() == TaskPhase::Running {
                    if changed.is_ok() {
                        write_msg(s, &FromNode::Running, t.io).await?;
                    }
                    // Nothing more to tell: wait for the end.
                    return Ok(execute.await);
                }
            }
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `answer` control frame and the archive's data frame, written together and flushed once
/// (one TLS flush rather than two for the usual small answer).
async fn write_answer<S: AsyncWrite + Unpin>(
    s: &mut S,
    outcome: &str,
    archive: &[u8],
    t: &Timeouts,
) -> Result<(), FrameError> {
    let msg = serde_json::to_vec(&FromNode::Answer {
        outcome: outcome.to_owned(),
        size: archive.len() as u64,
    })
    .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let (Ok(msg_len), Ok(archive_len)) = (u32::try_from(msg.len()), u32::try_from(archive.len()))
    else {
        return Err(FrameError::TooLarge {
            size: archive.len() as u64,
            limit: u64::from(u32::MAX),
        });
    };
    let timeout = t.io + t.data(archive.len() as u64);
    let write = async {
        if archive.len() <= COALESCE_ANSWER_BYTES {
            let mut buf = Vec::with_capacity(8 + msg.len() + archive.len());
            buf.extend_from_slice(&msg_len.to_be_bytes());
            buf.extend_from_slice(&msg);
            buf.extend_from_slice(&archive_len.to_be_bytes());
            buf.extend_from_slice(archive);
            s.write_all(&buf).await?;
        } else {
            s.write_all(&msg_len.to_be_bytes()).await?;
            s.write_all(&msg).await?;
            s.write_all(&archive_len.to_be_bytes()).await?;
            s.write_all(archive).await?;
        }
        s.flush().await
    };
    tokio::time::timeout(timeout, write)
        .await
        .map_err(|_| FrameError::Timeout(timeout))?
        .map_err(FrameError::Io)
}
