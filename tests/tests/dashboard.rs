//! The web dashboard in a real browser (headless chromium over WebDriver) against the real
//! `rjs-webserver`: signing in with `rjs-sign dashboard --print-url`, the pages, live updates,
//! the gallery's stitched Mandelbrot, answers and their files, and every security rule of
//! `docs/dashboard.md`. A test lookup (`rjs_e2e::lab`) leases the jobs and posts signed
//! answers, so that each test decides when a task finishes. Screenshots go to
//! `<target>/dashboard-screenshots/` (listed by `scripts/test.sh`).

use std::path::PathBuf;
use std::process::Command;

use rjs_e2e::browser::Browser;
use rjs_e2e::lab::{AnswerSpec, Lab};
use rjs_e2e::{WebServer, bin, make_bundle, run_ok};
use rjs_sample_mandelbrot as mandelbrot;
use rjs_signer::answer::Ending;
use rjs_signer::image::Image;
use rjs_signer::keys::{KeyPair, write_key_pair};

/// A web server with author `alice` (and her key files), started.
struct Site {
    ws: WebServer,
    keys: tempfile::TempDir,
}

impl Site {
    fn start() -> Site {
        let mut ws = WebServer::init().unwrap();
        ws.start().unwrap();
        Site {
            ws,
            keys: tempfile::tempdir().unwrap(),
        }
    }

    /// Enrols author `name`; their key pair (its files in `keys`).
    fn author(&self, name: &str) -> KeyPair {
        let key = self.ws.add_author(name).unwrap();
        write_key_pair(&key, name, self.keys.path(), false).unwrap();
        key
    }

    /// `rjs-sign dashboard --print-url` as `name`: the one-time login link.
    fn login_url(&self, name: &str) -> String {
        let out = run_ok(
            Command::new(bin("rjs-sign"))
                .args(["dashboard", "--print-url", "--server"])
                .arg(self.ws.url(""))
                .arg("--ca")
                .arg(self.ws.ca_pem())
                .arg("--key")
                .arg(self.keys.path().join(format!("{name}.key")))
                .env("RJS_HOME", self.keys.path().join("home")),
        )
        .unwrap();
        let url = out.trim().to_owned();
        assert!(
            url.starts_with(&self.ws.url("/dashboard/login?token=")),
            "{url}"
        );
        assert_eq!(
            url.lines().count(),
            1,
            "--print-url prints only the URL: {out}"
        );
        url
    }

    /// Signs `b` in through the login page's button.
    fn sign_in(&self, b: &Browser, name: &str) {
        b.goto(&self.login_url(name)).unwrap();
        b.click("form[action='/dashboard/login'] button").unwrap();
        if let Err(e) = b.wait_until("the dashboard after sign-in", |b| {
            b.url().is_ok_and(|u| u.ends_with("/dashboard/submissions"))
        }) {
            panic!("{e}: at {:?}: {}", b.url(), b.source().unwrap_or_default());
        }
    }

    /// A blocking client for `path` with the browser's session cookie (read over WebDriver:
    /// page scripts cannot, it is HttpOnly).
    fn get_as(&self, b: &Browser, path: &str) -> reqwest::blocking::Response {
        let cookie = b.session_cookie().unwrap();
        self.ws
            .anon_client()
            .unwrap()
            .get(self.ws.url(path))
            .header(
                "cookie",
                format!("{}={cookie}", rjs_webserver::dashboard::session::COOKIE),
            )
            .send()
            .unwrap()
    }
}

fn screenshots() -> PathBuf {
    rjs_harness::paths::target_dir().join("dashboard-screenshots")
}

/// The sample's own arguments and its 8 bands as PNG files (what its tasks write).
fn mandelbrot_tiles() -> (Vec<Vec<u8>>, Image) {
    let p = mandelbrot::parse_args(&["160", "120", "60"]).unwrap();
    let tiles = (0..8u32)
        .map(|i| {
            let t = mandelbrot::parse_task(Some(&i.to_string()), Some("8"), p.height).unwrap();
            mandelbrot::encode_png(&mandelbrot::render_task(&p, &t)).unwrap()
        })
        .collect();
    let whole = mandelbrot::parse_task(None, None, p.height).unwrap();
    let native = mandelbrot::encode_png(&mandelbrot::render_task(&p, &whole)).unwrap();
    (tiles, Image::decode_png(&native, u64::MAX).unwrap())
}

fn tile_answer(png: &[u8], i: usize) -> AnswerSpec<'static> {
    AnswerSpec {
        ending: Ending::Exit { code: 0 },
        stdout: b"",
        stderr: b"",
        files: vec![(format!("tile-{i}.png"), png.to_vec())],
    }
}

/// The text of the element, or "" if it is not there.
fn text_or_empty(b: &Browser, css: &str) -> String {
    b.text(css).unwrap_or_default()
}

#[test]
fn an_author_signs_in_sees_progress_live_and_the_stitched_mandelbrot() {
    let site = Site::start();
    let alice = site.author("alice");
    let bundle = make_bundle(&alice, "mandelbrot", 8);
    let api = site.ws.author(alice).unwrap();
    let up = api.upload(bundle, false).unwrap();
    let sid = api.submissions(Some(&up.bundle_id)).unwrap().submissions[0].id;
    let lab = Lab::enrol(&site.ws, "lab-1").unwrap();
    let leases = lab.lease(8).unwrap();
    assert_eq!(leases.len(), 8);
    let (tiles, native) = mandelbrot_tiles();
    // Half the tiles before anyone looks.
    for (i, l) in leases.iter().enumerate().take(4) {
        lab.answer(l, &tile_answer(&tiles[i], i)).unwrap();
    }

    let b = Browser::start().unwrap();
    site.sign_in(&b, "alice");
    let shots = screenshots();

    // Submissions: the bundle, with its counts.
    let row = format!("#submission-{sid}");
    let counts = b.text(&format!("{row} .counts")).unwrap();
    assert!(
        counts.contains("4 done") && counts.contains("4 running"),
        "{counts}"
    );
    assert!(b.text(&row).unwrap().contains("mandelbrot"));
    b.screenshot(&shots.join("submissions.png")).unwrap();

    // The submission page updates as tasks finish, without a reload.
    b.click(&format!("{row} a")).unwrap();
    b.wait_until("the submission page", |b| {
        b.count("#summary").unwrap_or(0) == 1
    })
    .unwrap();
    assert_eq!(b.text("[data-count=done]").unwrap(), "4");
    b.js("window.rjsNoReload = 'still here'; return null;")
        .unwrap();
    for (i, l) in leases.iter().enumerate().skip(4) {
        lab.answer(l, &tile_answer(&tiles[i], i)).unwrap();
        let want = (i + 1).to_string();
        b.wait_until(&format!("{want} done shown live"), |b| {
            text_or_empty(b, "[data-count=done]") == want
        })
        .unwrap();
    }
    let last = format!("#job-{} [data-f=state]", leases[7].job_id);
    b.wait_until("the last row done", |b| text_or_empty(b, &last) == "done")
        .unwrap();
    assert_eq!(
        b.js("return window.rjsNoReload || null;").unwrap(),
        serde_json::json!("still here"),
        "the page was reloaded"
    );
    assert_eq!(b.text("[data-count=exit_zero]").unwrap(), "8");
    b.screenshot(&shots.join("submission.png")).unwrap();

    // The gallery: the stitched image is the native render, pixel for pixel.
    b.click("a[href$='/gallery']").unwrap();
    b.wait_until("the stitched image loaded", |b| {
        b.js("const i = document.getElementById('stitched'); return !!(i && i.complete && i.naturalWidth > 0);")
            .is_ok_and(|v| v == serde_json::json!(true))
    })
    .unwrap();
    assert_eq!(b.count(".gallery img").unwrap(), 8);
    let stitched = site.get_as(&b, &format!("/dashboard/submissions/{sid}/stitched.png"));
    assert_eq!(stitched.status(), 200);
    let stitched = Image::decode_png(&stitched.bytes().unwrap(), u64::MAX).unwrap();
    assert_eq!(
        (stitched.width, stitched.height),
        (native.width, native.height)
    );
    assert!(
        stitched == native,
        "the stitched image differs from the native render"
    );
    b.screenshot(&shots.join("gallery.png")).unwrap();

    // An answer page: outcome, node key, the PNG preview.
    b.goto(
        &site
            .ws
            .url(&format!("/dashboard/jobs/{}", leases[2].job_id)),
    )
    .unwrap();
    let page = b.source().unwrap();
    assert!(page.contains("verifies"), "{page}");
    assert!(page.contains(&lab.node_key.public().fingerprint().to_string()));
    assert_eq!(b.count("figure.preview img").unwrap(), 1);
    b.screenshot(&shots.join("answer.png")).unwrap();

    // No page broke its Content-Security-Policy.
    let console = b.console().unwrap();
    assert!(
        !console
            .iter()
            .any(|m| m.contains("Content Security Policy")),
        "{console:?}"
    );
}
