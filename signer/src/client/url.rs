//! A web server's origin, as authors configure it.

use std::fmt;

use reqwest::Url;

/// A web server's origin: `https://host[:port]`, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `https://host:port`, without a trailing slash (the default port dropped, as sent).
    origin: String,
}

/// Why a text is not a usable web server origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerUrlError {
    #[error("{text:?} is not a URL")]
    NotAUrl {
        text: String,
        #[source]
        source: url::ParseError,
    },
    #[error(
        "refusing {text:?}: the web server is reached over HTTPS only (https://host:port), never {scheme}://"
    )]
    NotHttps { text: String, scheme: String },
    #[error("{0:?} names no host")]
    NoHost(String),
    #[error("{0:?} holds credentials: requests are signed with your key instead")]
    Credentials(String),
    #[error("{0:?} must be only https://host:port, without a path, query or fragment")]
    NotAnOrigin(String),
}

impl ServerUrl {
    /// Accepts `https://host[:port][/]`; refuses other schemes (http:// above all), paths,
    /// queries, fragments and credentials.
    pub fn parse(text: &str) -> Result<Self, ServerUrlError> {
        let text = text.trim();
        let url = Url::parse(text).map_err(|source| ServerUrlError::NotAUrl {
            text: text.into(),
            source,
        })?;
        if url.scheme() != "https" {
            return Err(ServerUrlError::NotHttps {
                text: text.into(),
                scheme: url.scheme().into(),
            });
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ServerUrlError::NoHost(text.into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ServerUrlError::Credentials(text.into()));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(ServerUrlError::NotAnOrigin(text.into()));
        }
        let origin = url.as_str().trim_end_matches('/').to_owned();
        Ok(ServerUrl { origin })
    }

    /// `https://host:port`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The URL of a path (with query) on this server.
    pub fn join(&self, path_and_query: &str) -> String {
        debug_assert!(path_and_query.starts_with('/'));
        format!("{}{}", self.origin, path_and_query)
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.origin())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_origins() {
        for ok in [
            "https://h:8443",
            "https://h:8443/",
            " https://127.0.0.1:1 ",
            "https://[::1]:8443",
        ] {
            ServerUrl::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(
            ServerUrl::parse("https://h:8443/")
                .unwrap()
                .join("/api/v1/jobs"),
            "https://h:8443/api/v1/jobs"
        );
        assert_eq!(
            ServerUrl::parse("https://h:443").unwrap().origin(),
            "https://h",
            "the default port is dropped, as it is sent"
        );
        let e = ServerUrl::parse("http://h:8443").unwrap_err().to_string();
        assert!(e.contains("HTTPS only"), "{e}");
        for bad in [
            "h:8443",
            "ftp://h",
            "https://h:8443/rjs",
            "https://h:8443/?x=1",
            "https://h:8443/#f",
            "https://u:p@h:8443",
            "https://",
            "",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
