//! The node's job server: mutual TLS (tokio-rustls) and the framed protocol of
//! `docs/compute-protocol.md` (`rjs_wire::node`). Every read and write has a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rjs_signer::error_chain;
use rjs_wire::node::{
    self, CONTROL_TIMEOUT, FrameError, FromNode, IDLE_TIMEOUT, RefusalCode, ToNode, read_frame,
    read_msg_idle, write_frame, write_msg,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::node::Node;
use rjs_signer::bundle::is_sha256_hex as valid_sha;

/// Time a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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
        let admitted = match node.admit(Arc::new(bundle), Some(&sha), task).await {
            Ok(a) => a,
            Err(r) => {
                tracing::info!(%peer, job = job_id, code = r.code.as_str(), reason = %r.reason, "job refused");
                refuse(&mut s, r.code, r.reason).await?;
                continue;
            }
        };
        write_msg(&mut s, &FromNode::Accepted, CONTROL_TIMEOUT).await?;
        let signer = admitted.signer().to_owned();
        match node.execute(admitted).await {
            Ok(answer) => {
                tracing::info!(%peer, job = job_id, task, outcome = %answer.outcome, %signer, "job done");
                write_msg(
                    &mut s,
                    &FromNode::Answer {
                        outcome: answer.outcome.clone(),
                        size: answer.bytes.len() as u64,
                    },
                    CONTROL_TIMEOUT,
                )
                .await?;
                write_frame(
                    &mut s,
                    &answer.bytes,
                    node::data_timeout(answer.bytes.len() as u64),
                )
                .await?;
            }
            Err(e) => {
                tracing::error!(%peer, job = job_id, error = %error_chain(&e), "could not build the answer");
                refuse(
                    &mut s,
                    RefusalCode::Unavailable,
                    format!("could not build the answer: {}", error_chain(&e)),
                )
                .await?;
            }
        }
    }
}
