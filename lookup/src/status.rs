//! The local status socket (`<data>/status.sock`, protocol in [`rjs_wire::status`]): the
//! running lookup answers the node panel, `why` and counters; `rjs-lookup nodes` and
//! `rjs-lookup why` ask it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rjs_wire::status::{MAX_REQUEST, MAX_RESPONSE, StatusError, StatusRequest};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// Time allowed for one request or response.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Computes the answer to one request.
pub type Handler =
    Arc<dyn Fn(StatusRequest) -> serde_json::Result<serde_json::Value> + Send + Sync>;

/// Binds `path` (replacing a stale socket; mode 0600) and answers requests until aborted.
pub fn serve(path: &Path, handler: Handler) -> Result<JoinHandle<()>> {
    if path.exists() {
        // A live lookup would still answer: refuse to steal its socket.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another lookup is serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let h = handler.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(STATUS_TIMEOUT, answer(conn, h)).await;
            });
        }
    }))
}

async fn answer(conn: UnixStream, handler: Handler) -> std::io::Result<()> {
    let (r, mut w) = conn.into_split();
    let mut line = Vec::new();
    BufReader::new(r)
        .take(MAX_REQUEST as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    let reply = if line.len() > MAX_REQUEST {
        error_json("request too long")
    } else {
        match serde_json::from_slice::<StatusRequest>(&line) {
            Ok(req) => handler(req)
                .unwrap_or_else(|e| error_json(&format!("encoding: {}", rjs_cmd::chain(&e)))),
            Err(e) => error_json(&format!("bad request: {}", rjs_cmd::chain(&e))),
        }
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

fn error_json(msg: &str) -> serde_json::Value {
    serde_json::to_value(StatusError {
        error: msg.to_owned(),
    })
    .unwrap_or_default()
}

/// Asks the lookup serving `data` one question.
pub async fn query<T: serde::de::DeserializeOwned>(data: &Path, req: &StatusRequest) -> Result<T> {
    let path = data.join(rjs_wire::status::SOCKET_FILE);
    let work = async {
        let mut conn = UnixStream::connect(&path).await.with_context(|| {
            format!(
                "connecting to {} (is `rjs-lookup serve --data {}` running?)",
                path.display(),
                data.display()
            )
        })?;
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        conn.write_all(&line).await?;
        let mut body = Vec::new();
        (&mut conn)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut body)
            .await?;
        if body.len() > MAX_RESPONSE {
            bail!("status response over {MAX_RESPONSE} bytes");
        }
        if let Ok(e) = serde_json::from_slice::<StatusError>(&body) {
            bail!("the lookup answered: {}", e.error);
        }
        serde_json::from_slice(&body).context("decoding the status response")
    };
    tokio::time::timeout(STATUS_TIMEOUT, work)
        .await
        .map_err(|_| {
            anyhow!(
                "no answer from {} within {STATUS_TIMEOUT:?}",
                path.display()
            )
        })?
}

/// [`query`] from synchronous code (the CLI).
pub fn query_blocking<T: serde::de::DeserializeOwned>(
    data: &Path,
    req: &StatusRequest,
) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(query(data, req))
}
