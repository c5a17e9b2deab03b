//! Dashboard sessions: the `__Host-` cookie, the [`Viewer`] it identifies, and the check that
//! a state-changing request comes from our own pages (CSRF).
//!
//! A session is server-side (the store keeps the SHA-256 of its id): it ends on logout, after
//! [`IDLE`] without use, at [`ABSOLUTE`] after login whatever happens, and at once when its
//! author is removed. The cookie is `Secure; HttpOnly; SameSite=Strict; Path=/` with the
//! `__Host-` prefix (no `Domain`: only this host gets it).

use actix_web::HttpRequest;
use actix_web::http::header;

use super::secret::Secret;
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::server::route::Caller;
use crate::store::{Subject, now};

/// The session cookie's name.
pub const COOKIE: &str = "__Host-rjs-session";
/// A session unused this long ends (seconds).
pub const IDLE: i64 = 30 * 60;
/// A session ends this long after login (seconds).
pub const ABSOLUTE: i64 = 12 * 60 * 60;

/// Who is looking at a dashboard page: the session's subject.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub subject: Subject,
    /// SHA-256 of the session id (to end it).
    pub session_hash: String,
}

impl Viewer {
    /// The author's id, or `not-found` for the administrator (who sees no author's data:
    /// the same answer as for something that does not exist).
    pub fn author_id(&self) -> Result<i64, ApiError> {
        self.subject
            .author()
            .map(|a| a.id)
            .ok_or_else(|| ApiError::not_found("no such page"))
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.subject, Subject::Admin)
    }

    /// Who is signed in, in words.
    pub fn who(&self) -> String {
        match &self.subject {
            Subject::Author(a) => a.name.clone(),
            Subject::Admin => "administrator".to_owned(),
        }
    }
}

/// The session id in the request's cookies, if it has the right form.
pub fn session_cookie(req: &HttpRequest) -> Option<Secret> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .and_then(|(_, v)| Secret::parse(v))
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(id: &Secret) -> String {
    format!(
        "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={ABSOLUTE}",
        id.as_str()
    )
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

impl Caller for Viewer {
    async fn identify(req: &HttpRequest, state: &AppState) -> Result<Self, ApiError> {
        let Some(id) = session_cookie(req) else {
            return Err(ApiError::unauthorized(
                "not-signed-in",
                "you are not signed in",
            ));
        };
        let hash = id.hash();
        let lookup = hash.clone();
        let session = state
            .store_call("reading the session", move |s| {
                s.session(&lookup, now(), IDLE)
            })
            .await?;
        match session {
            Some(s) => Ok(Viewer {
                subject: s.subject,
                session_hash: hash,
            }),
            None => Err(ApiError::unauthorized(
                "not-signed-in",
                "your session has ended: sign in again",
            )),
        }
    }
}

/// Refuses a state-changing request that does not come from one of this server's own pages.
/// A browser that sends `Sec-Fetch-Site` (every current one) must say `same-origin`: it is
/// set by the browser, never by a page. Without it (an old browser, a script), `Origin` must be
/// present and name this host over HTTPS. (`Origin` alone cannot be the rule: under
/// `Referrer-Policy: no-referrer` browsers send `Origin: null` even for a form on the same
/// origin.)
pub fn same_origin(req: &HttpRequest) -> Result<(), ApiError> {
    let refuse = |why: String| Err(ApiError::forbidden("cross-site", why));
    let single = |name: &str| {
        let mut all = req.headers().get_all(name);
        match (all.next(), all.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => Ok(Some(v.to_str().unwrap_or("(not text)"))),
            _ => Err(ApiError::bad_request(format!(
                "more than one {name} header"
            ))),
        }
    };
    match single("sec-fetch-site")? {
        Some("same-origin") => return Ok(()),
        Some(site) => {
            return refuse(format!(
                "a {} request may not change anything here",
                site.chars().take(40).collect::<String>()
            ));
        }
        None => {}
    }
    let host = req.connection_info().host().to_owned();
    match single("origin")? {
        Some(origin) if origin == format!("https://{host}") => Ok(()),
        Some(origin) => refuse(format!(
            "a request from {} may not change anything here",
            origin.chars().take(100).collect::<String>()
        )),
        None => refuse("a request without Origin may not change anything here".to_owned()),
    }
}
