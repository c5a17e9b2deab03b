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
        b.sign_in(&self.login_url(name), "/dashboard/submissions")
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// `name` submits a bundle of `tasks` tasks; a test lookup `lab` enrols and leases them
    /// all: (the submission's id, the lookup, its leases in task order).
    fn submit_leased(
        &self,
        key: KeyPair,
        name: &str,
        tasks: u32,
        lab: &str,
    ) -> (i64, Lab<'_>, Vec<rjs_wire::api::Lease>) {
        let bundle = make_bundle(&key, name, tasks);
        let api = self.ws.author(key).unwrap();
        let up = api.upload(bundle, false).unwrap();
        let sid = api.submissions(Some(&up.bundle_id)).unwrap().submissions[0].id;
        let lab = Lab::enrol(&self.ws, lab).unwrap();
        let leases = lab.lease(tasks).unwrap();
        assert_eq!(leases.len(), tasks as usize);
        (sid, lab, leases)
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
    let (sid, lab, leases) = site.submit_leased(alice, "mandelbrot", 8, "lab-1");
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
    // Rows that finished live show the node's times too, as rows rendered by the server do.
    for l in [&leases[0], &leases[7]] {
        let time = b.text(&format!("#job-{} [data-f=time]", l.job_id)).unwrap();
        assert_eq!(time, "812 ms wall · 790 ms CPU");
    }
    b.screenshot(&shots.join("submission.png")).unwrap();
    // On a phone: nothing wider than the screen (tables scroll inside their box).
    b.resize(390, 844).unwrap();
    assert!(
        !b.overflows_sideways().unwrap(),
        "the page is wider than a phone"
    );
    b.screenshot(&shots.join("submission-phone.png")).unwrap();
    b.resize(1280, 900).unwrap();

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
    let violations = b.csp_violations().unwrap();
    assert!(violations.is_empty(), "{violations:?}");
}

/// Alice's submission of 2 tasks, answered: task 0 with hostile text and non-PNG files, task 1
/// with a PNG. (submission id, job ids).
fn hostile_answers(site: &Site, alice: KeyPair) -> (i64, Vec<i64>) {
    let (sid, lab, leases) = site.submit_leased(alice, "hostile", 2, "lab-h");
    let (tiles, _) = mandelbrot_tiles();
    lab.answer(
        &leases[0],
        &AnswerSpec {
            ending: Ending::Exit { code: 3 },
            stdout: b"<script>window.pwned = 1</script><img src=x onerror=alert(1)>",
            stderr: b"\x1b[31m</pre><b>bold</b>",
            files: vec![
                (
                    "evil.svg".into(),
                    br#"<svg xmlns="http://www.w3.org/2000/svg" onload="window.pwned=2"><script>window.pwned=3</script></svg>"#.to_vec(),
                ),
                ("page.html".into(), b"<html><script>window.pwned=4</script></html>".to_vec()),
                // A PNG signature in front of HTML: not a PNG that decodes.
                ("fake.png".into(), [&rjs_signer::image::PNG_MAGIC[..], b"<script>x</script>"].concat()),
            ],
        },
    )
    .unwrap();
    lab.answer(&leases[1], &tile_answer(&tiles[1], 1)).unwrap();
    (sid, leases.iter().map(|l| l.job_id).collect())
}

#[test]
fn answers_are_shown_escaped_and_only_decoded_pngs_inline() {
    let site = Site::start();
    let alice = site.author("alice");
    let (sid, jobs) = hostile_answers(&site, alice);
    let b = Browser::start().unwrap();
    site.sign_in(&b, "alice");

    b.goto(&site.ws.url(&format!("/dashboard/jobs/{}", jobs[0])))
        .unwrap();
    // The text is there, as text: no element came of it, no script ran.
    let out = b.text("pre.output").unwrap();
    assert!(out.contains("<script>window.pwned = 1</script>"), "{out}");
    assert_eq!(
        b.count("script").unwrap(),
        1,
        "only the dashboard's own script"
    );
    assert_eq!(
        b.count("main img").unwrap(),
        0,
        "no image: no file is a PNG that decodes"
    );
    assert_eq!(
        b.js("return window.pwned || null;").unwrap(),
        serde_json::Value::Null
    );
    let page = b.source().unwrap();
    assert!(page.contains("exit 3"), "{page}");
    b.screenshot(&screenshots().join("answer-hostile.png"))
        .unwrap();

    // Every file link: served as an attachment with nosniff, whatever it is; asking for the
    // SVG inline still downloads it.
    for index in 0..3 {
        for query in ["", "?download=1"] {
            let r = site.get_as(
                &b,
                &format!("/dashboard/jobs/{}/files/{index}{query}", jobs[0]),
            );
            assert_eq!(r.status(), 200);
            let h = r.headers();
            assert!(
                h["content-disposition"]
                    .to_str()
                    .unwrap()
                    .starts_with("attachment;"),
                "{h:?}"
            );
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert_eq!(h["content-type"], "application/octet-stream");
        }
    }
    let answer_page = b.url().unwrap();
    let svg = format!("/dashboard/jobs/{}/files/0", jobs[0]);
    b.js(&format!("window.location.href = '{svg}'; return null;"))
        .unwrap();
    b.wait_until("the SVG downloaded", |b| {
        b.downloads()
            .is_ok_and(|d| d.iter().any(|p| p.ends_with("evil.svg")))
    })
    .unwrap();
    assert_eq!(
        b.url().unwrap(),
        answer_page,
        "the browser left the page: it rendered the file"
    );
    assert_eq!(
        b.js("return window.pwned || null;").unwrap(),
        serde_json::Value::Null
    );

    // The PNG answer: shown inline, re-encoded by the server.
    b.goto(&site.ws.url(&format!("/dashboard/jobs/{}", jobs[1])))
        .unwrap();
    assert_eq!(b.count("figure.preview img").unwrap(), 1);
    let png = site.get_as(&b, &format!("/dashboard/jobs/{}/files/0", jobs[1]));
    assert_eq!(png.headers()["content-type"], "image/png");
    assert_eq!(png.headers()["x-content-type-options"], "nosniff");
    let shown = Image::decode_png(&png.bytes().unwrap(), u64::MAX).unwrap();
    let (tiles, _) = mandelbrot_tiles();
    assert_eq!(shown, Image::decode_png(&tiles[1], u64::MAX).unwrap());

    // Every page and file carries the policy and no-store; nothing is cached.
    let csp = rjs_webserver::dashboard::CSP;
    for path in [
        "/dashboard/submissions".to_owned(),
        format!("/dashboard/submissions/{sid}"),
        format!("/dashboard/submissions/{sid}/gallery"),
        format!("/dashboard/jobs/{}", jobs[0]),
        format!("/dashboard/jobs/{}/files/0", jobs[1]),
        format!("/dashboard/jobs/{}/answer.zip", jobs[0]),
        format!("/dashboard/submissions/{sid}/answers.zip"),
        "/dashboard/assets/app.css".to_owned(),
        "/dashboard/no-such-page".to_owned(),
    ] {
        let r = site.get_as(&b, &path);
        let h = r.headers();
        assert_eq!(h["content-security-policy"], csp, "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        if !path.contains("assets") {
            assert_eq!(h["cache-control"], "no-store", "{path}");
        }
    }
    // The zip of all answers holds both archives, as the nodes signed them.
    let zip = site.get_as(&b, &format!("/dashboard/submissions/{sid}/answers.zip"));
    let bytes = zip.bytes().unwrap();
    let mut archive = zip_reader(&bytes);
    assert_eq!(archive.len(), 2);
    let mut first = Vec::new();
    std::io::Read::read_to_end(&mut archive.by_name("task-0.zip").unwrap(), &mut first).unwrap();
    rjs_signer::answer::verify_answer(&first, &Default::default()).unwrap();

    // And none of them broke the policy; a violation would be seen (the check can fail).
    let violations = b.csp_violations().unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    b.js("const s = document.createElement('script'); s.textContent = 'window.pwned = 5'; document.body.appendChild(s); return null;")
        .unwrap();
    assert_eq!(
        b.js("return window.pwned || null;").unwrap(),
        serde_json::Value::Null
    );
    assert!(
        !b.csp_violations().unwrap().is_empty(),
        "the injected script was not reported"
    );
}

fn zip_reader(bytes: &[u8]) -> zip::ZipArchive<std::io::Cursor<&[u8]>> {
    zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap()
}

#[test]
fn another_author_sees_nothing_of_alices_not_even_by_url() {
    let site = Site::start();
    let alice = site.author("alice");
    site.author("bob");
    let (sid, jobs) = hostile_answers(&site, alice);
    let b = Browser::start().unwrap();
    site.sign_in(&b, "bob");
    assert!(b.source().unwrap().contains("No submission yet"));
    // Alice's ids and ids that do not exist get the same answer.
    let paths = |sid: i64, job: i64| {
        vec![
            format!("/dashboard/submissions/{sid}"),
            format!("/dashboard/submissions/{sid}/gallery"),
            format!("/dashboard/submissions/{sid}/stitched.png"),
            format!("/dashboard/submissions/{sid}/answers.zip"),
            format!("/dashboard/submissions/{sid}/events?from=0&to=1"),
            format!("/dashboard/jobs/{job}"),
            format!("/dashboard/jobs/{job}/answer.zip"),
            format!("/dashboard/jobs/{job}/files/0"),
            format!("/dashboard/admin"),
        ]
    };
    let body_of = |path: &str| {
        let r = site.get_as(&b, path);
        (r.status().as_u16(), r.text().unwrap())
    };
    for (theirs, missing) in paths(sid, jobs[1])
        .iter()
        .zip(paths(sid + 1000, jobs[1] + 1000))
    {
        let (s1, t1) = body_of(theirs);
        let (s2, t2) = body_of(&missing);
        assert_eq!(s1, 404, "{theirs}: {t1}");
        assert_eq!((s1, t1), (s2, t2), "{theirs} answers unlike {missing}");
    }
    b.goto(&site.ws.url(&format!("/dashboard/jobs/{}", jobs[1])))
        .unwrap();
    assert!(!b.source().unwrap().contains("hostile"));
}

#[test]
fn a_login_link_works_once_expires_and_sessions_end_on_logout_and_removal() {
    let site = Site::start();
    site.author("alice");
    let b = Browser::start().unwrap();

    // Opening the link (twice, as a prefetcher would) uses nothing up.
    let url = site.login_url("alice");
    for _ in 0..2 {
        b.goto(&url).unwrap();
        assert!(b.text("main").unwrap().contains("alice"));
    }
    let fingerprint = b.text(".fingerprint").unwrap();
    b.screenshot(&screenshots().join("login.png")).unwrap();
    b.confirm_sign_in("/dashboard/submissions").unwrap();
    assert!(
        !b.url().unwrap().contains("token"),
        "the token left the address bar"
    );
    let (_, http_only, secure) = b.session_cookie_flags().unwrap();
    assert!(http_only && secure);
    assert!(!fingerprint.is_empty());

    // The same link again: refused, and the POST of its form too.
    b.goto(&url).unwrap();
    assert!(b.source().unwrap().contains("not valid"));
    let token = url.split("token=").nth(1).unwrap();
    let post = |origin: Option<&str>, site_header: Option<&str>, body: String| {
        let mut rb = site
            .ws
            .anon_client()
            .unwrap()
            .post(site.ws.url("/dashboard/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            rb = rb.header("origin", o);
        }
        if let Some(s) = site_header {
            rb = rb.header("sec-fetch-site", s);
        }
        rb.send().unwrap()
    };
    let same = site.ws.url("");
    assert_eq!(
        post(Some(&same), None, format!("token={token}")).status(),
        404
    );

    // A token past its minute is refused (made in the store with an earlier clock).
    let expired = rjs_webserver::dashboard::secret::Secret::new();
    {
        use rjs_webserver::store::Sessions as _;
        let store = rjs_webserver::store::sqlite::SqliteStore::open(&site.ws.data().join("rjs.db"))
            .unwrap();
        let alice = rjs_webserver::store::Store::list_authors(&store).unwrap()[0].id;
        let now = rjs_webserver::store::now();
        store
            .add_login_token(&expired.hash(), Some(alice), now - 1, now - 61)
            .unwrap();
    }
    b.goto(
        &site
            .ws
            .url(&format!("/dashboard/login?token={}", expired.as_str())),
    )
    .unwrap();
    assert!(b.source().unwrap().contains("not valid"));

    // Cross-site POSTs change nothing: a fresh token survives them.
    let fresh = site.login_url("alice");
    let token = fresh.split("token=").nth(1).unwrap().to_owned();
    for (origin, fetch_site) in [
        (Some("https://evil.example"), Some("cross-site")),
        (None, Some("same-site")),
        (Some("https://evil.example"), None),
        (None, None),
    ] {
        let r = post(origin, fetch_site, format!("token={token}"));
        assert_eq!(r.status(), 403, "{origin:?} {fetch_site:?}");
    }
    b.goto(&fresh).unwrap();
    assert!(
        b.text("main").unwrap().contains("alice"),
        "the token was used up by a refused POST"
    );

    // Logout ends the session (a GET of the logout URL does not).
    let cookie = b.session_cookie().unwrap();
    b.goto(&site.ws.url("/dashboard/submissions")).unwrap();
    let r = site.get_as(&b, "/dashboard/logout");
    assert_eq!(r.status(), 405);
    b.goto(&site.ws.url("/dashboard/submissions")).unwrap();
    b.click("form.logout button").unwrap();
    b.wait_until("signed out", |b| {
        b.source().is_ok_and(|s| s.contains("not signed in"))
    })
    .unwrap();
    let r = site
        .ws
        .anon_client()
        .unwrap()
        .get(site.ws.url("/dashboard/submissions"))
        .header(
            "cookie",
            format!("{}={cookie}", rjs_webserver::dashboard::session::COOKIE),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "the old session still works after logout");

    // Removing the author ends their session at once.
    site.sign_in(&b, "alice");
    site.ws.admin(&["author", "remove", "alice"]).unwrap();
    b.goto(&site.ws.url("/dashboard/submissions")).unwrap();
    assert!(b.source().unwrap().contains("session has ended"));
}

#[test]
fn the_administrator_sees_the_grid_and_no_answers() {
    let site = Site::start();
    let alice = site.author("alice");
    let (sid, jobs) = hostile_answers(&site, alice);
    let out = site
        .ws
        .admin(&["dashboard-link", "--admin", "--url", &site.ws.url("")])
        .unwrap();
    let url = out.trim();
    let b = Browser::start().unwrap();
    b.goto(url).unwrap();
    assert!(b.text("main").unwrap().contains("administrator"));
    b.confirm_sign_in("/dashboard/admin").unwrap();
    let page = b.text("main").unwrap();
    assert!(page.contains("lab-h") && page.contains("alice"), "{page}");
    b.screenshot(&screenshots().join("admin.png")).unwrap();
    for path in [
        format!("/dashboard/submissions/{sid}"),
        format!("/dashboard/jobs/{}", jobs[0]),
        format!("/dashboard/jobs/{}/files/0", jobs[0]),
    ] {
        assert_eq!(site.get_as(&b, &path).status(), 404, "{path}");
    }
}

#[test]
fn rjs_sign_dashboard_says_whom_the_link_is_for_and_opens_no_browser_when_asked() {
    let site = Site::start();
    let key = site.author("alice");
    let fingerprint = key.public().fingerprint().to_string();
    let out = run_ok(
        Command::new(bin("rjs-sign"))
            .args(["dashboard", "--no-open", "--server"])
            .arg(site.ws.url(""))
            .arg("--ca")
            .arg(site.ws.ca_pem())
            .arg("--key")
            .arg(site.keys.path().join("alice.key"))
            .env("RJS_HOME", site.keys.path().join("home"))
            // A desktop whose opener would be tried without --no-open.
            .env("DISPLAY", ":0"),
    )
    .unwrap();
    assert!(
        out.contains(&format!("Sign in to the dashboard as {fingerprint}")),
        "{out}"
    );
    assert!(
        out.contains(&site.ws.url("/dashboard/login?token=")),
        "{out}"
    );
    assert!(!out.contains("opened"), "{out}");
}
