//! Signed author requests are bound to the web server they are meant for (issue 10, item 1),
//! and a forged request does not tell whether its key is enrolled (item 6). Two real
//! `rjs-webserver` processes, each with its own CA, with the same author enrolled in both.

use reqwest::Method;
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use rjs_e2e::*;
use rjs_signer::request::{H_AUDIENCE, H_SIGNATURE, RequestAuth};
use rjs_webserver::store::sqlite::{RowCounts, SqliteStore};
use serde_json::Value;

/// (status, code, message) of a response.
fn refusal(r: Response) -> (StatusCode, String, String) {
    let status = r.status();
    let body: Value = r.json().unwrap_or(Value::Null);
    let field = |k: &str| body[k].as_str().unwrap_or("").to_owned();
    (status, field("code"), field("error"))
}

/// `headers` (a captured request's authentication) and `body` sent to `url` with `client`.
fn replay(
    client: &Client,
    method: Method,
    url: &str,
    headers: &[(&'static str, String)],
    body: &[u8],
) -> Response {
    let mut rb = client
        .request(method, url)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(body.to_vec());
    for (name, value) in headers {
        rb = rb.header(*name, value);
    }
    rb.send().unwrap()
}

fn rows(ws: &WebServer) -> RowCounts {
    SqliteStore::open(&ws.data().join("rjs.db"))
        .unwrap()
        .row_counts()
        .unwrap()
}

fn started_with_alice(secret: [u8; 32]) -> WebServer {
    let mut ws = WebServer::init().unwrap();
    let key = rjs_signer::KeyPair::from_secret(secret);
    ws.admin(&["author", "add", "alice", "--key", &key.public().to_base64()])
        .unwrap();
    ws.start().unwrap();
    ws
}

#[test]
fn a_request_signed_for_one_web_server_is_refused_by_another() {
    let secret = [7u8; 32];
    let a = started_with_alice(secret);
    let b = started_with_alice(secret);
    let at_a = a.author(rjs_signer::KeyPair::from_secret(secret)).unwrap();
    let at_b = b.author(rjs_signer::KeyPair::from_secret(secret)).unwrap();
    assert_ne!(at_a.audience(), at_b.audience());
    let to_b = b.anon_client().unwrap();
    let to_a = a.anon_client().unwrap();

    // Uploads: signed for A, sent to B first (refused, nothing stored), then to A (stored).
    let bundle = make_bundle(at_a.key(), "audience", 2);
    let path = "/api/v1/bundles?resubmit=true";
    let (_, auth) = at_a.signed_request(Method::POST, path, bundle.clone(), now());
    let headers = auth.headers();
    let before = rows(&b);
    let (status, code, message) =
        refusal(replay(&to_b, Method::POST, &b.url(path), &headers, &bundle));
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "wrong-audience")
    );
    assert!(
        message.contains("signed for another web server"),
        "{message}"
    );
    assert!(message.contains(at_a.audience()), "{message}");
    assert_eq!(rows(&b), before, "a refused request changes nothing");
    let r = replay(&to_a, Method::POST, &a.url(path), &headers, &bundle);
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(at_b.jobs(None).unwrap().jobs.is_empty());
    assert_eq!(at_a.jobs(None).unwrap().jobs.len(), 2);

    // Reads: a job list and whoami captured at A are refused by B.
    for path in ["/api/v1/jobs", "/api/v1/whoami"] {
        let (_, auth) = at_a.signed_request(Method::GET, path, Vec::new(), now());
        let r = replay(&to_b, Method::GET, &b.url(path), &auth.headers(), &[]);
        assert_eq!(refusal(r).1, "wrong-audience", "{path}");
        let r = replay(&to_a, Method::GET, &a.url(path), &auth.headers(), &[]);
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }

    // The audience is signed: rewriting the header to B's breaks the signature.
    let (_, auth) = at_a.signed_request(Method::GET, "/api/v1/jobs", Vec::new(), now());
    let mut headers = auth.headers();
    headers[0] = (H_AUDIENCE, at_b.audience().to_owned());
    let r = replay(&to_b, Method::GET, &b.url("/api/v1/jobs"), &headers, &[]);
    assert_eq!(refusal(r).1, "bad-signature");

    // A V1 request (no audience) is refused, naming the missing header.
    let (_, auth) = at_b.signed_request(Method::GET, "/api/v1/whoami", Vec::new(), now());
    let v1: Vec<_> = auth
        .headers()
        .into_iter()
        .filter(|(name, _)| *name != H_AUDIENCE)
        .collect();
    let (status, code, message) = refusal(replay(
        &to_b,
        Method::GET,
        &b.url("/api/v1/whoami"),
        &v1,
        &[],
    ));
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "missing-auth")
    );
    assert!(message.contains(H_AUDIENCE), "{message}");

    // The CLI's words for the refusal.
    let refused = rjs_signer::client::ServerRefused {
        status: 401,
        error: message,
        code: "wrong-audience".into(),
    };
    assert!(refused.to_string().contains("check that --ca"), "{refused}");
}

/// Without the private key, nobody learns whether a key is enrolled: a request with a forged
/// signature is answered the same way for an enrolled and for an unknown key.
#[test]
fn a_forged_request_does_not_tell_whether_its_key_is_enrolled() {
    let ws = started_with_alice([9u8; 32]);
    let client = ws.anon_client().unwrap();
    let enrolled = ws
        .author(rjs_signer::KeyPair::from_secret([9u8; 32]))
        .unwrap();
    let stranger = ws.author(rjs_signer::KeyPair::generate()).unwrap();
    let mut answers = Vec::new();
    for who in [&enrolled, &stranger] {
        let (_, auth) = who.signed_request(Method::GET, "/api/v1/jobs", Vec::new(), now());
        let mut headers = auth.headers();
        // Another signature of the right length: the attacker's guess.
        let forged = RequestAuth::sign(
            &rjs_signer::KeyPair::generate(),
            who.audience(),
            "GET",
            "/api/v1/jobs",
            &auth.content_sha256,
            auth.timestamp,
        );
        let i = headers.iter().position(|(n, _)| *n == H_SIGNATURE).unwrap();
        headers[i] = forged.headers()[i].clone();
        let r = replay(&client, Method::GET, &ws.url("/api/v1/jobs"), &headers, &[]);
        answers.push(refusal(r));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].1, "bad-signature");
    // With the key, the holder is told plainly that it is not enrolled.
    let e = stranger.whoami().unwrap_err();
    assert!(
        rjs_cmd::chain(&e).contains("(unknown-author)"),
        "{}",
        rjs_cmd::chain(&e)
    );
}
