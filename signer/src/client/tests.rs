use super::*;

#[test]
fn refusals_read_the_error_body_or_fall_back_to_the_status() {
    let r = ServerRefused::from_body(
        401,
        br#"{"error":"timestamp 5 is 600 s from the server's clock","code":"stale-timestamp"}"#,
    );
    assert_eq!(r.code, "stale-timestamp");
    let s = r.to_string();
    assert!(
        s.starts_with(
            "server refused: timestamp 5 is 600 s from the server's clock (stale-timestamp)"
        ),
        "{s}"
    );
    assert!(s.contains("clock"), "{s}");
    let r = ServerRefused::from_body(502, b"<html>Bad gateway</html>");
    assert_eq!(
        r.to_string(),
        "server refused: HTTP status 502: <html>Bad gateway</html> (no-error-body)"
    );
    assert_eq!(
        ServerRefused::from_body(500, b"").to_string(),
        "server refused: HTTP status 500 (no-error-body)"
    );
    // Control characters from the server never reach the terminal as such.
    let r = ServerRefused::from_body(
        400,
        b"{\"error\":\"a\\u001b[2Jb\",\"code\":\"bad-request\"}",
    );
    assert!(!r.to_string().contains('\u{1b}'), "{r}");
}

#[test]
fn empty_body_hash_is_the_sha256_of_nothing() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn bundle_ids_are_64_lowercase_hex() {
    assert!(is_bundle_id(&"ab".repeat(32)));
    assert!(!is_bundle_id(&"AB".repeat(32)));
    assert!(!is_bundle_id("abc"));
    assert!(!is_bundle_id(&format!("{}&x=1", "a".repeat(60))));
}

#[test]
fn transfer_timeouts_are_finite_and_grow_with_size() {
    assert_eq!(transfer_timeout(0), REQUEST_TIMEOUT);
    let t = transfer_timeout(64 * 1024 * 1024);
    assert!(
        t > Duration::from_secs(600) && t < Duration::from_secs(1800),
        "{t:?}"
    );
}

#[test]
fn the_client_refuses_plain_http_even_if_asked() {
    // ServerUrl refuses http:// before any client exists; the client refuses it too.
    let api = test_client();
    let err = api
        .http
        .get("http://127.0.0.1:9/api/v1/whoami")
        .send()
        .unwrap_err();
    assert!(
        err.is_builder() || err.to_string().contains("URL scheme"),
        "{err}"
    );
}

#[test]
fn a_bad_bundle_id_is_refused_before_any_request() {
    let api = test_client();
    let e = api.jobs(Some("abc&x=1")).unwrap_err();
    assert!(matches!(e, ClientError::NotABundleId(_)), "{e}");
}

/// A client of a port nobody listens on, trusting the test CA.
fn test_client() -> AuthorClient {
    let ca = rjs_wire::tls::certs_from_pem(TEST_CA.as_bytes(), "test CA").unwrap();
    AuthorClient::new(
        ServerUrl::parse("https://127.0.0.1:9").unwrap(),
        &ca,
        KeyPair::from_secret([1; 32]),
    )
    .unwrap()
}

/// A self-signed CA certificate (fixed test data) to build a client with.
const TEST_CA: &str = include_str!("../cli/testdata/ca.pem");
