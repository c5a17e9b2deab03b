//! The node's job server: mutual TLS (tokio-rustls) and the framed protocol of
//! `docs/compute-protocol.md` (`rjs_wire::node`). Every read and write has a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rjs_signer::error_chain;
use rjs_wire::node::{
    self, CONTROL_TIMEOUT, FrameError, FromNode, IDLE_TIMEOUT, RefusalCode, ToNode, read_frame,
    read_msg_idle, write_msg,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::node::Node;
use rjs_signer::bundle::is_sha256_hex as valid_sha;

/// Time a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers up to this size are sent with their `answer` message in one write.
const COALESCE_ANSWER_BYTES: usize = 256 << 10;
/// Most connections served at once (each holds at most one job).
pub const MAX_CONNECTIONS: usize = 256;

/// Serves until `shutdown` completes; then stops accepting and returns (jobs in flight are
/// abandoned with their connections; the lookup reports them).
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many connections: closing");
            continue;
        };
        let (acceptor, node) = (acceptor.clone(), node.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
            // The cluster CA also issues node certificates that can authenticate as a client;
            // only the lookup (whose certificates name no node) may offer jobs.
            let from_node = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| rjs_wire::pki::node_id_of(c));
            if let Some(other) = from_node {
                tracing::warn!(%peer, node = %other, "refused: a node's certificate may not offer jobs");
                return;
            }
            if let Err(e) = handle(&node, tls, peer).await {
                tracing::info!(%peer, error = %error_chain(&e), "connection ended");
            }
        });
    }
}

async fn refuse<S: AsyncWrite + Unpin>(
    s: &mut S,
    code: RefusalCode,
    reason: String,
) -> Result<(), FrameError> {
    write_msg(s, &FromNode::Refused { code, reason }, CONTROL_TIMEOUT).await
}

/// One connection: jobs one after another until the client closes or breaks the protocol.
pub async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    node: &Node,
    mut s: S,
    peer: SocketAddr,
) -> Result<(), FrameError> {
    let max_bundle = node.verify_limits.max_bundle_bytes;
    loop {
        let msg: ToNode = match read_msg_idle(&mut s, IDLE_TIMEOUT).await {
            Ok(m) => m,
            Err(FrameError::Closed) => return Ok(()),
            Err(FrameError::Malformed(why)) => {
                refuse(
                    &mut s,
                    RefusalCode::BadRequest,
                    format!("malformed message: {why}"),
                )
                .await?;
                return Err(FrameError::Malformed(why));
            }
            Err(e) => return Err(e),
        };
        let (sha, size, task, job_id) = match msg {
            ToNode::Ping => {
                write_msg(&mut s, &FromNode::Pong, CONTROL_TIMEOUT).await?;
                continue;
            }
            ToNode::Offer {
                bundle_sha256,
                bundle_size,
                task,
                job_id,
            } => (bundle_sha256, bundle_size, task, job_id),
        };
        if !valid_sha(&sha) {
            refuse(
                &mut s,
                RefusalCode::BadRequest,
                "bundle_sha256 must be 64 lowercase hex digits".into(),
            )
            .await?;
            continue;
        }
        if size > max_bundle {
            refuse(
                &mut s,
                RefusalCode::InvalidBundle,
                format!("the bundle is {size} bytes; this node takes at most {max_bundle}"),
            )
            .await?;
            continue;
        }
        // A bundle kept ready in memory was verified when it was first admitted: only the
        // per-offer checks run (task, group, limits, trust, idle, slot).
        if let Some(ready) = node.bundles.ready(&sha) {
            tracing::info!(%peer, job = job_id, task, bundle = %&sha[..12], "job offered");
            let admitted = node.admit_ready(&ready, task).await;
            run_admitted(node, &mut s, peer, job_id, task, admitted).await?;
            continue;
        }
        let bundle = match node.bundles.get(&sha, max_bundle) {
            Some(b) => b,
            None => {
                write_msg(&mut s, &FromNode::SendBundle, CONTROL_TIMEOUT).await?;
                let b = read_frame(&mut s, size, node::data_timeout(size)).await?;
                if b.len() as u64 != size {
                    refuse(
                        &mut s,
                        RefusalCode::BadRequest,
                        format!("announced {size} bytes, sent {}", b.len()),
                    )
                    .await?;
                    continue;
                }
                b
            }
        };
        tracing::info!(%peer, job = job_id, task, bundle = %&sha[..12], "job offered");
        let admitted = node.admit(Arc::new(bundle), Some(&sha), task).await;
        run_admitted(node, &mut s, peer, job_id, task, admitted).await?;
    }
}

/// Sends the node's decision and, for an admitted job, runs it and sends the answer.
async fn run_admitted<S: AsyncWrite + Unpin>(
    node: &Node,
    s: &mut S,
    peer: SocketAddr,
    job_id: i64,
    task: u32,
    admitted: Result<crate::node::Admitted, crate::node::Refusal>,
) -> Result<(), FrameError> {
    let admitted = match admitted {
        Ok(a) => a,
        Err(r) => {
            tracing::info!(%peer, job = job_id, code = r.code.as_str(), reason = %r.reason, "job refused");
            return refuse(s, r.code, r.reason).await;
        }
    };
    write_msg(s, &FromNode::Accepted, CONTROL_TIMEOUT).await?;
    let signer = admitted.signer().to_owned();
    match node.execute(admitted).await {
        Ok(answer) => {
            tracing::info!(%peer, job = job_id, task, outcome = %answer.outcome, %signer, "job done");
            write_answer(s, &answer.outcome, &answer.bytes).await
        }
        Err(e) => {
            tracing::error!(%peer, job = job_id, error = %error_chain(&e), "could not build the answer");
            refuse(
                s,
                RefusalCode::Unavailable,
                format!("could not build the answer: {}", error_chain(&e)),
            )
            .await
        }
    }
}

/// The `answer` control frame and the archive's data frame, written together and flushed once
/// (one TLS flush rather than two for the usual small answer).
async fn write_answer<S: AsyncWrite + Unpin>(
    s: &mut S,
    outcome: &str,
    archive: &[u8],
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
    let timeout = CONTROL_TIMEOUT + node::data_timeout(archive.len() as u64);
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
