//! The real `rjs-webserver serve --blobs s3://…` against a throw-away S3 server (moto on
//! loopback, rjs_harness::s3): an author uploads a bundle larger than a part (multipart), a
//! lookup downloads it, an answer larger than the inline limit comes back and the author
//! fetches it; every blob is in the bucket and none in the data directory.

use std::time::Duration;

use reqwest::StatusCode;
use rjs_e2e::*;
use rjs_harness::s3::{self as moto, S3Server};
use rjs_wire::api;
use serde_json::json;

const BUCKET: &str = "rjs-e2e";

#[test]
fn bundles_and_answers_go_through_the_bucket() {
    let s3 = S3Server::start().unwrap();
    s3.create_bucket(BUCKET).unwrap();
    let mut ws = WebServer::init().unwrap();
    // The keys in a private file, never on the command line.
    let creds = ws.dir.path().join("s3-credentials");
    std::fs::write(
        &creds,
        format!(
            "access_key_id = {}\nsecret_access_key = {}\n",
            moto::ACCESS_KEY_ID,
            moto::SECRET_ACCESS_KEY
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let key = ws.add_author("alice").unwrap();
    let lookup = ws.add_lookup("lab").unwrap();
    ws.extra_args = vec![
        "--blobs".into(),
        format!("s3://{BUCKET}/grid"),
        "--s3-endpoint".into(),
        s3.endpoint(),
        "--s3-region".into(),
        moto::REGION.into(),
        "--s3-path-style".into(),
        "--s3-allow-http".into(),
        "--s3-credentials".into(),
        creds.display().to_string(),
    ];
    ws.start().unwrap();
    // 10 MiB of random input: more than one 8 MiB part.
    let bytes = big_bundle(&key, "s3-job", 1, 10 * 1024 * 1024);
    let author = ws.author(key).unwrap();
    let up = author.upload(bytes.clone(), false).unwrap();
    assert_eq!(up.bundle_id, sha256_hex(&bytes));
    let keys = s3.keys(BUCKET, "grid/").unwrap();
    assert!(
        keys.contains(&format!("grid/blobs/{}", up.bundle_id)),
        "{keys:?}"
    );

    // A lookup leases the job and downloads the bundle from the bucket through the server.
    let lab = ws.lookup_client(&lookup).unwrap();
    let r = lab
        .post(ws.url("/lookup/v1/lease"))
        .json(&json!({"max": 1, "lease_secs": 60}))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let leases = r.json::<api::LeaseResponse>().unwrap().leases;
    assert_eq!(leases.len(), 1);
    let job = leases[0].job_id;
    let r = lab
        .get(ws.url(&format!("/lookup/v1/bundles/{}", up.bundle_id)))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.content_length(), Some(bytes.len() as u64), "a sized body");
    let got = r.bytes().unwrap();
    assert!(got[..] == bytes[..], "the bundle came back changed");

    // An answer over the inline limit goes to the bucket too.
    let mut answer = format!("answer for {job} ").into_bytes();
    answer.resize(1024 * 1024, b'x');
    let r = lab
        .put(ws.url(&format!("/lookup/v1/jobs/{job}/answer")))
        .header(api::H_OUTCOME, "exit 0")
        .header(api::H_NODE, "node-1")
        .body(answer.clone())
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text());
    let keys = s3.keys(BUCKET, "grid/").unwrap();
    assert!(
        keys.contains(&format!("grid/blobs/{}", sha256_hex(&answer))),
        "{keys:?}"
    );

    // The author fetches it.
    let (rb, _) = author.signed_request(
        reqwest::Method::GET,
        &format!("/api/v1/jobs/{job}/answer"),
        Vec::new(),
        now(),
    );
    let r = rb.timeout(Duration::from_secs(30)).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().unwrap()[..] == answer[..]);

    // Nothing was kept in the data directory's folder; no spool file is left.
    let folder = ws.data().join("blobs").join("blobs");
    let local = std::fs::read_dir(&folder).map(|d| d.count()).unwrap_or(0);
    assert_eq!(local, 0, "blobs in {}", folder.display());
    let tmp = std::fs::read_dir(ws.data().join("blobs").join("tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0);
}

#[test]
fn plain_http_to_a_non_loopback_endpoint_is_refused() {
    let ws = WebServer::init().unwrap();
    let out = std::process::Command::new(bin("rjs-webserver"))
        .args(["serve", "--data"])
        .arg(ws.data())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--blobs",
            "s3://bucket/x",
            "--s3-endpoint",
            "http://192.0.2.1:9000",
            "--s3-allow-http",
        ])
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
}
