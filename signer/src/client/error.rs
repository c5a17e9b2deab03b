//! What can go wrong talking to the web server, layer by layer.

use std::fmt;
use std::path::PathBuf;

use reqwest::Method;
use rjs_wire::api::ErrorBody;

/// A failed author API call. Each variant says what failed; the cause is its source.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("loading the web server's CA certificate {}", path.display())]
    LoadCa {
        path: PathBuf,
        #[source]
        source: rjs_wire::tls::TlsError,
    },
    #[error(
        "the web server's CA file holds {count} certificates: it must hold exactly one, the \
         web server's own CA certificate (it names the server every request is signed for)"
    )]
    CaCount { count: usize },
    #[error("building the TLS configuration from the web server's CA certificate")]
    Tls(#[source] rjs_wire::tls::TlsError),
    #[error("building the HTTPS client")]
    Build(#[source] reqwest::Error),
    #[error("bad URL {url}")]
    BadUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("internal error: {path} would be sent as {sent}")]
    PathNotCanonical { path: String, sent: String },
    #[error("{0:?} is not a bundle id")]
    NotABundleId(String),
    #[error("connecting to {url}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url} timed out")]
    Timeout {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url}")]
    Transport {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url}")]
    Refused {
        method: String,
        url: String,
        #[source]
        source: ServerRefused,
    },
    #[error("reading the answer of {url}")]
    ReadBody {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the answer of {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("the server's {what} from {url} is not what this client understands")]
    Decode {
        what: &'static str,
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// A transport failure, with what was being done: `connecting to URL`, `METHOD URL timed
    /// out` or `METHOD URL`; the URL is said once, here, not again by reqwest.
    pub(crate) fn transport(e: reqwest::Error, method: &Method, url: &str) -> ClientError {
        let (method, url) = (method.to_string(), url.to_owned());
        let source = e.without_url();
        if source.is_connect() {
            ClientError::Connect { url, source }
        } else if source.is_timeout() {
            ClientError::Timeout {
                method,
                url,
                source,
            }
        } else {
            ClientError::Transport {
                method,
                url,
                source,
            }
        }
    }

    /// The server's refusal, if the server answered with an error status.
    pub fn refusal(&self) -> Option<&ServerRefused> {
        match self {
            ClientError::Refused { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether trying again later may help: the network or the server's answer failed on the
    /// way, not the server's decision, nor this side's settings.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Timeout { .. }
                | ClientError::Transport { .. }
                | ClientError::ReadBody { .. }
        )
    }
}

/// A request the server answered with an error (`{"error", "code"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRefused {
    pub status: u16,
    pub error: String,
    pub code: String,
}

impl ServerRefused {
    /// Parses an error response's body; a body that is not the API's error object is shown
    /// (its start) with the status.
    pub fn from_body(status: u16, body: &[u8]) -> ServerRefused {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => ServerRefused {
                status,
                error: b.error,
                code: b.code,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
                let text = text.trim();
                ServerRefused {
                    status,
                    error: if text.is_empty() {
                        format!("HTTP status {status}")
                    } else {
                        format!("HTTP status {status}: {text}")
                    },
                    code: "no-error-body".to_owned(),
                }
            }
        }
    }

    /// What the author can do about this refusal.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self.code.as_str() {
            "stale-timestamp" => {
                "check this computer's clock (it must be within 5 minutes of the server's)"
            }
            "unknown-author" => {
                "ask the web server's administrator to enrol your public key (rjs-webserver author add)"
            }
            "wrong-audience" => {
                "this request was signed for another web server: check that --ca / config ca is this server's CA certificate"
            }
            "signer-mismatch" => "upload bundles signed with the same key as --key / config key",
            _ => return None,
        })
    }
}

impl fmt::Display for ServerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The server's words are untrusted: no control character reaches a terminal.
        write!(
            f,
            "server refused: {} ({})",
            clean(&self.error),
            clean(&self.code)
        )?;
        if let Some(hint) = self.hint() {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerRefused {}

/// Text from outside made safe for a terminal: control characters are escaped.
pub fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
