//! Author authentication (`docs/webserver-api.md`, "Author authentication"), in the
//! documented order: headers, audience, timestamp, signature, author ([`authenticate`], before
//! the body is read), then body hash and nonce ([`finish`], after it). The signature is
//! checked before the key is looked up, so that whoever does not hold a key cannot learn
//! whether it is enrolled: a forged request is `bad-signature` either way. The nonce is recorded only once
//! the signature and the body's hash have passed; an upload only checks it after the body
//! ([`check_body`], [`check_nonce_unused`]) and records it in the transaction that records
//! the bundle, so that a refused upload leaves nothing behind.

use actix_web::HttpRequest;
use actix_web::http::header::HeaderMap;
use rjs_signer::request::{
    H_AUDIENCE, H_CONTENT_SHA256, H_KEY, H_NONCE, H_SIGNATURE, H_TIMESTAMP, RequestAuth,
    RequestAuthError,
};

use super::AppState;
use super::error::ApiError;
use crate::store::Author;

/// Allowed distance between a request's timestamp and the server's clock, seconds.
pub const TIMESTAMP_WINDOW: u64 = 300;
/// How long a nonce is kept past its request's timestamp, seconds (longer than the window).
pub const NONCE_TTL: u64 = 600;

const AUTH_HEADERS: [&str; 6] = [
    H_AUDIENCE,
    H_KEY,
    H_TIMESTAMP,
    H_NONCE,
    H_CONTENT_SHA256,
    H_SIGNATURE,
];

/// An author whose request head passed authentication.
#[derive(Debug, Clone)]
pub struct Authed {
    pub author: Author,
    pub auth: RequestAuth,
}

fn map_auth_error(e: RequestAuthError) -> ApiError {
    match e {
        RequestAuthError::Missing(h) => {
            ApiError::unauthorized("missing-auth", format!("missing header {h}"))
        }
        RequestAuthError::Malformed(h, why) => {
            ApiError::unauthorized("bad-auth-header", format!("malformed header {h}: {why}"))
        }
        RequestAuthError::BadSignature => {
            ApiError::unauthorized("bad-signature", "the request signature does not verify")
        }
    }
}

/// Parses the authentication headers (step 1).
pub fn parse_headers(headers: &HeaderMap) -> Result<RequestAuth, ApiError> {
    for name in AUTH_HEADERS {
        let mut values = headers.get_all(name);
        if let Some(v) = values.next() {
            if values.next().is_some() {
                return Err(ApiError::unauthorized(
                    "bad-auth-header",
                    format!("malformed header {name}: repeated"),
                ));
            }
            if v.to_str().is_err() {
                return Err(ApiError::unauthorized(
                    "bad-auth-header",
                    format!("malformed header {name}: not printable ASCII"),
                ));
            }
        }
    }
    RequestAuth::from_headers(|n| headers.get(n).and_then(|v| v.to_str().ok()))
        .map_err(map_auth_error)
}

/// Step 2: the request is meant for this server (`ours`: the audience of its CA certificate).
pub fn check_audience(audience: &str, ours: &str) -> Result<(), ApiError> {
    if audience != ours {
        return Err(ApiError::unauthorized(
            "wrong-audience",
            format!(
                "the request was signed for another web server (audience {audience}; this \
                 server's is {ours}, the SHA-256 of its CA certificate)"
            ),
        ));
    }
    Ok(())
}

/// Step 3: the timestamp is within [`TIMESTAMP_WINDOW`] of `now`.
pub fn check_timestamp(timestamp: u64, now: u64) -> Result<(), ApiError> {
    if timestamp.abs_diff(now) > TIMESTAMP_WINDOW {
        return Err(ApiError::unauthorized(
            "stale-timestamp",
            format!(
                "the request timestamp {timestamp} is more than {TIMESTAMP_WINDOW} s from the server's clock ({now})"
            ),
        ));
    }
    Ok(())
}

/// The path and query exactly as the client sent them.
pub fn path_and_query(req: &HttpRequest) -> &str {
    req.uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or_else(|| req.path())
}

/// Steps 1 to 5: headers, audience, timestamp, signature, enrolled author. Reads no body.
pub async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Authed, ApiError> {
    let auth = parse_headers(req.headers())?;
    check_audience(&auth.audience, &state.audience)?;
    check_timestamp(auth.timestamp, rjs_signer::unix_now())?;
    auth.verify(req.method().as_str(), path_and_query(req))
        .map_err(map_auth_error)?;
    let key = auth.key.to_base64();
    let author = state
        .store_call("looking up the author", move |s| s.author_by_key(&key))
        .await?
        .ok_or_else(|| {
            ApiError::unauthorized(
                "unknown-author",
                format!(
                    "the key {} is not an enrolled author",
                    auth.key.fingerprint()
                ),
            )
        })?;
    Ok(Authed { author, auth })
}

/// Step 6: the body's SHA-256 is the signed one.
pub fn check_body(authed: &Authed, body_sha256: &str) -> Result<(), ApiError> {
    if body_sha256 != authed.auth.content_sha256 {
        return Err(ApiError::unauthorized(
            "body-mismatch",
            format!(
                "the body's SHA-256 is {body_sha256}, the request signed {}",
                authed.auth.content_sha256
            ),
        ));
    }
    Ok(())
}

/// The refusal of a replayed request.
pub fn replayed() -> ApiError {
    ApiError::unauthorized("replayed-nonce", "this request's nonce was already used")
}

/// Until when the request's nonce is kept (Unix seconds).
pub fn nonce_expiry(authed: &Authed) -> i64 {
    i64::try_from(authed.auth.timestamp.saturating_add(NONCE_TTL)).unwrap_or(i64::MAX)
}

/// Step 7 without recording the nonce: refuses a request whose nonce this author already
/// used. For a request that records its nonce with its own effect, in one transaction (an
/// upload: [`crate::store::NewSubmission::nonce`]), so that a refused request leaves nothing.
pub async fn check_nonce_unused(state: &AppState, authed: &Authed) -> Result<(), ApiError> {
    let author_id = authed.author.id;
    let nonce = authed.auth.nonce.clone();
    let now = crate::store::now();
    let used = state
        .store_call("checking the request nonce", move |s| {
            s.nonce_used(author_id, &nonce, now)
        })
        .await?;
    if used {
        return Err(replayed());
    }
    Ok(())
}

/// Steps 6 and 7: the body's SHA-256 is the signed one, and the nonce is fresh (recorded).
/// For requests that change nothing else (reads).
pub async fn finish(state: &AppState, authed: &Authed, body_sha256: &str) -> Result<(), ApiError> {
    check_body(authed, body_sha256)?;
    let author_id = authed.author.id;
    let nonce = authed.auth.nonce.clone();
    let expires = nonce_expiry(authed);
    let now = crate::store::now();
    let fresh = state
        .store_call("recording the request nonce", move |s| {
            s.use_nonce(author_id, &nonce, expires, now)
        })
        .await?;
    if !fresh {
        return Err(replayed());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};
    use rjs_signer::KeyPair;

    fn map_of(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn signed() -> [(&'static str, String); 6] {
        let key = KeyPair::from_secret([9; 32]);
        RequestAuth::sign(
            &key,
            &"a".repeat(64),
            "GET",
            "/api/v1/whoami",
            &"0".repeat(64),
            1_800_000_000,
        )
        .headers()
    }

    #[test]
    fn header_parsing_codes() {
        let good = signed();
        let parsed = parse_headers(&map_of(&good)).unwrap();
        parsed.verify("GET", "/api/v1/whoami").unwrap();

        // Each header missing: missing-auth.
        for skip in 0..good.len() {
            let fewer: Vec<_> = good
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| p.clone())
                .collect();
            assert_eq!(
                parse_headers(&map_of(&fewer)).unwrap_err().code,
                "missing-auth"
            );
        }
        // Malformed values: bad-auth-header.
        for (i, bad) in [
            (0, "ABCDEF"),
            (1, "not base64!"),
            (2, "yesterday"),
            (3, "ABCDEF"),
            (4, "xyz"),
            (5, "AAAA"),
        ] {
            let mut h = good.clone();
            h[i].1 = bad.to_owned();
            let e = parse_headers(&map_of(&h)).unwrap_err();
            assert_eq!(e.code, "bad-auth-header", "{}", h[i].0);
            assert_eq!(e.status.as_u16(), 401);
        }
        // Repeated header: bad-auth-header.
        let mut h = map_of(&good);
        h.append(
            HeaderName::from_static(H_NONCE),
            HeaderValue::from_static("0123456789abcdef0123456789abcdef"),
        );
        assert_eq!(parse_headers(&h).unwrap_err().code, "bad-auth-header");
        // Not ASCII: bad-auth-header, not missing-auth.
        let mut h = map_of(&good);
        h.insert(
            HeaderName::from_static(H_NONCE),
            HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        assert_eq!(parse_headers(&h).unwrap_err().code, "bad-auth-header");
    }

    #[test]
    fn audience_is_ours() {
        check_audience(&"a".repeat(64), &"a".repeat(64)).unwrap();
        let e = check_audience(&"b".repeat(64), &"a".repeat(64)).unwrap_err();
        assert_eq!(e.code, "wrong-audience");
        assert_eq!(e.status.as_u16(), 401);
    }

    #[test]
    fn timestamp_window() {
        check_timestamp(1000, 1000).unwrap();
        check_timestamp(1000 - 300, 1000).unwrap();
        check_timestamp(1000 + 300, 1000).unwrap();
        assert_eq!(
            check_timestamp(1000 - 301, 1000).unwrap_err().code,
            "stale-timestamp"
        );
        assert_eq!(
            check_timestamp(1000 + 301, 1000).unwrap_err().code,
            "stale-timestamp"
        );
        assert_eq!(
            check_timestamp(u64::MAX, 1000).unwrap_err().code,
            "stale-timestamp"
        );
    }
}
