//! The web servers a lookup may use, and which of them it uses now (`docs/lookup-server.md`,
//! "Several web servers").
//!
//! A grid may run several stateless web servers on one shared store: the same CA, server
//! certificate and enrolled lookups, so one credentials file works with each of them, and a
//! job leased through one is the same job through every other. The lookup talks to one of
//! them at a time, the **current** one ([`Rotation::current`]). A request to it that fails
//! in a way that says the server is gone or unwell (no answer at all: refused, reset, timed
//! out, a TLS failure; or a gateway's 502/503/504) moves the lookup to the next one in the
//! list, round robin ([`Rotation::fail_over`]); the server it left gets its turn again when
//! the others fail. The servers are equals: there is no preferred one to return to, so a
//! working server is never left for another.
//!
//! Failures race: many requests in flight to a server that just died all fail. Only the
//! first failure of the server that is current moves the rotation; a failure of a server
//! already left (its request was sent before the move) changes nothing.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::watch;

/// Most web servers a lookup may be given.
pub const MAX_WEBSERVERS: usize = 16;

/// Why a list of web server URLs was refused. `Display` says which URL and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum WebServerListError {
    #[error("no web server given: at least one --webserver https://HOST:PORT")]
    Empty,
    #[error("{count} web servers given; at most {MAX_WEBSERVERS}")]
    TooMany { count: usize },
    #[error("web server URL {url:?} is not a URL")]
    Parse {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "web server URL {url:?}: only https:// is allowed (the lookup API is mutual TLS), not {scheme}://"
    )]
    NotHttps { url: String, scheme: String },
    #[error("web server URL {url:?} has no host")]
    NoHost { url: String },
    #[error(
        "web server URL {url:?}: a web server's base URL has no user name, password, query or fragment"
    )]
    NotBase { url: String },
    #[error("web server URL {url:?} is given twice (both are {normal})")]
    Duplicate { url: String, normal: String },
}

/// A validated, non-empty list of web server base URLs (at most [`MAX_WEBSERVERS`], each
/// `https://`, no two the same), in the order given. Each is normalised (lowercase scheme and
/// host, no default port, no trailing `/`), as requests are built from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebServers(Vec<String>);

impl WebServers {
    /// Checks and normalises `urls` (e.g. the `--webserver` flags, in order). A base URL may
    /// carry a path (a web server behind a reverse proxy under a prefix).
    pub fn parse<S: AsRef<str>>(urls: &[S]) -> Result<WebServers, WebServerListError> {
        if urls.is_empty() {
            return Err(WebServerListError::Empty);
        }
        if urls.len() > MAX_WEBSERVERS {
            return Err(WebServerListError::TooMany { count: urls.len() });
        }
        let mut out: Vec<String> = Vec::with_capacity(urls.len());
        for raw in urls {
            let raw = raw.as_ref();
            let normal = normalise(raw)?;
            if out.contains(&normal) {
                return Err(WebServerListError::Duplicate {
                    url: raw.to_owned(),
                    normal,
                });
            }
            out.push(normal);
        }
        Ok(WebServers(out))
    }

    /// The URLs, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true (a list has at least one URL); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `raw` as a base URL: `https://host[:port][/path]`, without a trailing `/`.
fn normalise(raw: &str) -> Result<String, WebServerListError> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| WebServerListError::Parse {
        url: raw.to_owned(),
        source: Box::new(e),
    })?;
    if url.scheme() != "https" {
        return Err(WebServerListError::NotHttps {
            url: raw.to_owned(),
            scheme: url.scheme().to_owned(),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(WebServerListError::NoHost {
            url: raw.to_owned(),
        });
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(WebServerListError::NotBase {
            url: raw.to_owned(),
        });
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// One move from a failed web server to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    pub from: String,
    pub to: String,
    /// The failure that caused it, with its cause chain.
    pub cause: String,
    pub at: Instant,
}

/// Which web server is current, and the failovers so far ([`Rotation::view`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationView {
    pub current: String,
    /// Its position in the list (0-based).
    pub index: usize,
    pub urls: Vec<String>,
    pub failovers: u64,
    pub last: Option<Failover>,
}

#[derive(Debug)]
struct Inner {
    current: usize,
    failovers: u64,
    last: Option<Failover>,
}

/// The current web server of a list, moved on by failures ([`Rotation::fail_over`]).
/// Subscribers ([`Rotation::subscribe`]) see the failover count change.
#[derive(Debug)]
pub struct Rotation {
    urls: Vec<String>,
    inner: Mutex<Inner>,
    moved: watch::Sender<u64>,
}

impl Rotation {
    /// Starts with the first URL of the list.
    pub fn new(servers: WebServers) -> Rotation {
        Rotation {
            urls: servers.0,
            inner: Mutex::new(Inner {
                current: 0,
                failovers: 0,
                last: None,
            }),
            moved: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current web server: its index (to hand back to [`Rotation::fail_over`]) and URL.
    pub fn current(&self) -> (usize, String) {
        let i = self.lock().current;
        (i, self.urls[i].clone())
    }

    /// The servers other than `index`, in list order from the one after it: (index, URL).
    pub fn others(&self, index: usize) -> Vec<(usize, String)> {
        let n = self.urls.len();
        (1..n)
            .map(|k| (index + k) % n)
            .map(|i| (i, self.urls[i].clone()))
            .collect()
    }

    /// How many web servers the list has.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Never true; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// A request to server `from` failed with `cause` in a way that says the server is gone
    /// or unwell: if `from` is still the current one and there is another, the next in the
    /// list becomes current and the move is returned. Otherwise (one server only, or another
    /// failure moved already) nothing changes.
    pub fn fail_over(&self, from: usize, cause: &str) -> Option<Failover> {
        self.fail_over_to(from, (from + 1) % self.urls.len().max(1), cause)
    }

    /// [`fail_over`](Self::fail_over) to server `to` (found ready) rather than the next.
    pub fn fail_over_to(&self, from: usize, to: usize, cause: &str) -> Option<Failover> {
        let mut g = self.lock();
        if g.current != from || to == from || to >= self.urls.len() {
            return None;
        }
        g.current = to;
        g.failovers += 1;
        let f = Failover {
            from: self.urls[from].clone(),
            to: self.urls[to].clone(),
            cause: cause.to_owned(),
            at: Instant::now(),
        };
        g.last = Some(f.clone());
        let n = g.failovers;
        drop(g);
        self.moved.send_replace(n);
        Some(f)
    }

    /// Changes with each failover (the value is the failover count).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }

    pub fn view(&self) -> RotationView {
        let g = self.lock();
        RotationView {
            current: self.urls[g.current].clone(),
            index: g.current,
            urls: self.urls.clone(),
            failovers: g.failovers,
            last: g.last.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(urls: &[&str]) -> Result<Vec<String>, String> {
        WebServers::parse(urls)
            .map(|w| w.urls().to_vec())
            .map_err(|e| rjs_cmd::chain(&e))
    }

    #[test]
    fn one_url_works_as_before() {
        assert_eq!(
            parse(&["https://grid.example:8443"]).unwrap(),
            ["https://grid.example:8443"]
        );
        assert_eq!(
            parse(&["https://127.0.0.1:8443/"]).unwrap(),
            ["https://127.0.0.1:8443"]
        );
        // A prefix behind a reverse proxy stays; case and the default port are normalised.
        assert_eq!(
            parse(&["HTTPS://Grid.Example:443/rjs/"]).unwrap(),
            ["https://grid.example/rjs"]
        );
        assert_eq!(
            parse(&["https://[::1]:8443"]).unwrap(),
            ["https://[::1]:8443"]
        );
    }

    #[test]
    fn a_list_keeps_its_order() {
        let urls = ["https://b:1", "https://a:2", "https://c:3"];
        assert_eq!(parse(&urls).unwrap(), urls);
    }

    #[test]
    fn bad_lists_are_refused_with_the_reason() {
        let e = parse(&[]).unwrap_err();
        assert!(e.contains("at least one"), "{e}");
        let e = parse(&["http://grid:8080"]).unwrap_err();
        assert!(
            e.contains("only https://") && e.contains("not http://"),
            "{e}"
        );
        let e = parse(&["grid.example:8443"]).unwrap_err();
        assert!(e.contains("only https://"), "{e}");
        let e = parse(&["not a url"]).unwrap_err();
        assert!(e.contains("\"not a url\" is not a URL: "), "{e}");
        let e = parse(&["https://u:p@grid:1"]).unwrap_err();
        assert!(e.contains("no user name"), "{e}");
        let e = parse(&["https://grid:1/?x=1"]).unwrap_err();
        assert!(e.contains("query"), "{e}");
        let e = parse(&["https://grid:1", "https://GRID:1/"]).unwrap_err();
        assert!(
            e.contains("\"https://GRID:1/\" is given twice (both are https://grid:1)"),
            "{e}"
        );
        let e = parse(&["https://grid", "https://grid:443"]).unwrap_err();
        assert!(e.contains("given twice"), "{e}");
        let many: Vec<String> = (0..=MAX_WEBSERVERS)
            .map(|i| format!("https://w{i}:1"))
            .collect();
        let e = WebServers::parse(&many).unwrap_err().to_string();
        assert_eq!(e, "17 web servers given; at most 16");
        let most: Vec<String> = (0..MAX_WEBSERVERS)
            .map(|i| format!("https://w{i}:1"))
            .collect();
        assert_eq!(WebServers::parse(&most).unwrap().len(), MAX_WEBSERVERS);
    }

    fn rotation(n: usize) -> Rotation {
        let urls: Vec<String> = (0..n).map(|i| format!("https://w{i}:1")).collect();
        Rotation::new(WebServers::parse(&urls).unwrap())
    }

    #[test]
    fn failover_goes_round_robin_and_comes_back() {
        let r = rotation(3);
        let mut rx = r.subscribe();
        assert_eq!(r.current(), (0, "https://w0:1".to_owned()));
        let order: Vec<usize> = (0..7)
            .map(|_| {
                let (i, _) = r.current();
                r.fail_over(i, "connection refused").unwrap();
                r.current().0
            })
            .collect();
        assert_eq!(order, [1, 2, 0, 1, 2, 0, 1]);
        let v = r.view();
        assert_eq!(v.failovers, 7);
        assert_eq!(v.current, "https://w1:1");
        let last = v.last.unwrap();
        assert_eq!(
            (last.from.as_str(), last.to.as_str(), last.cause.as_str()),
            ("https://w0:1", "https://w1:1", "connection refused")
        );
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 7);
    }

    #[test]
    fn a_failure_of_a_server_already_left_moves_nothing() {
        let r = rotation(3);
        // Ten requests in flight to w0 fail together: one move.
        let moves = (0..10)
            .filter(|_| r.fail_over(0, "reset").is_some())
            .count();
        assert_eq!(moves, 1);
        assert_eq!(r.current().0, 1);
        assert_eq!(r.view().failovers, 1);
    }

    #[test]
    fn one_server_never_fails_over() {
        let r = rotation(1);
        assert!(r.fail_over(0, "refused").is_none());
        assert_eq!(r.current().0, 0);
        assert_eq!(r.view().failovers, 0);
        assert!(!r.subscribe().has_changed().unwrap());
    }
}
