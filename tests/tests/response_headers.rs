//! Every web server response says it must not be cached, must not be sniffed, and that the
//! host is HTTPS only (issue 10, item 6), through the real `rjs-webserver`: a health check,
//! an author's job list and answer download, a refusal and an unknown route.

use reqwest::Method;
use reqwest::blocking::Response;
use rjs_e2e::*;

fn assert_security_headers(what: &str, r: &Response) {
    for (name, value) in rjs_webserver::server::SECURITY_HEADERS {
        assert_eq!(
            r.headers().get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{what}: header {name}"
        );
    }
}

#[test]
fn every_response_carries_the_security_headers() {
    let mut ws = WebServer::init().unwrap();
    let key = ws.add_author("alice").unwrap();
    ws.start().unwrap();
    let alice = ws.author(key).unwrap();
    let anon = ws.anon_client().unwrap();

    let r = anon.get(ws.url("/healthz")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_security_headers("healthz", &r);
    let r = anon.get(ws.url("/nope")).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_security_headers("unknown route", &r);
    let r = anon.get(ws.url("/api/v1/jobs")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_security_headers("refusal", &r);

    let up = alice
        .upload(make_bundle(alice.key(), "headers", 1), false)
        .unwrap();
    let (rb, _) = alice.signed_request(Method::GET, "/api/v1/jobs", Vec::new(), now());
    let r = rb.send().unwrap();
    assert_eq!(r.status(), 200);
    assert_security_headers("job list", &r);
    let path = format!("/api/v1/jobs/{}/answer", up.jobs[0].id);
    let (rb, _) = alice.signed_request(Method::GET, &path, Vec::new(), now());
    let r = rb.send().unwrap();
    assert_eq!(r.status(), 404, "no answer yet");
    assert_security_headers("answer", &r);
}
