//! The author's command line (`rjs-sign`) end to end: the real binary against a real
//! `rjs-webserver serve` on loopback, configured the way a daily user would (keys made by
//! `keygen`, settings in `$RJS_HOME/config.toml`), with this test acting as the lookup.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rjs_e2e::*;
use rjs_wire::api::{self, JobList, JobState};
use serde_json::{Value, json};

/// Longest any single `rjs-sign` command may run before the test fails.
const COMMAND_LIMIT: Duration = Duration::from_secs(90);

/// The finished output of one command.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn both(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
    /// Asserts that standard output holds `text` (showing both outputs if not).
    #[track_caller]
    fn assert_stdout_has(&self, text: &str) {
        assert!(self.stdout.contains(text), "{}", self.both());
    }
    #[track_caller]
    fn assert_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: unexpected exit status\n{}",
            self.both()
        );
        self
    }
}

/// A child whose stdout and stderr are collected by threads (so it never blocks on a full
/// pipe), killed if it outlives its deadline.
struct Running {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

impl Running {
    fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Running {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// What the child wrote (after its exit, or the pipes would stay open).
    fn output(&mut self) -> (String, String) {
        let join =
            |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        (join(self.stdout.take()), join(self.stderr.take()))
    }

    /// Waits at most `limit` for the exit; kills the child and fails the test otherwise.
    fn finish(mut self, limit: Duration) -> Out {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let (out, err) = self.output();
                panic!(
                    "command still running after {limit:?}; killed\nstdout:\n{out}\nstderr:\n{err}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (stdout, stderr) = self.output();
        Out {
            code: status.code(),
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only if the test failed before `finish`: never leave the child behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One author's computer: a home folder and an `$RJS_HOME` of their own, a working folder.
struct User {
    tmp: tempfile::TempDir,
}

impl User {
    fn new() -> User {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["home", "rjs-home", "work"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        User { tmp }
    }
    fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }
    fn rjs_home(&self) -> PathBuf {
        self.tmp.path().join("rjs-home")
    }
    fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }
    fn keys(&self) -> PathBuf {
        self.tmp.path().join("keys")
    }

    /// `rjs-sign ARGS` in the working folder, with only this user's folders in its
    /// environment.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("rjs-sign"));
        c.args(args)
            .current_dir(self.work())
            .env("RJS_HOME", self.rjs_home())
            .env("HOME", self.home())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("RUST_LOG");
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        Running::spawn(&mut self.cmd(args)).finish(COMMAND_LIMIT)
    }

    /// `rjs-sign keygen --name NAME --dir KEYS`; returns the private key file.
    fn keygen(&self, name: &str) -> PathBuf {
        let out = self.run(&["keygen", "--name", name, "--dir", path_str(&self.keys())]);
        out.assert_code(0, "keygen");
        let key = self.keys().join(format!("{name}.key"));
        assert!(key.is_file(), "{}", out.both());
        assert!(self.keys().join(format!("{name}.pub")).is_file());
        out.assert_stdout_has("fingerprint:");
        key
    }

    /// `rjs-sign pack SAMPLE --key KEY -o WORK/OUT`; returns the bundle file.
    fn pack(&self, sample: &str, key: &Path, out: &str) -> PathBuf {
        let dir = samples().join(sample);
        let r = self.run(&["pack", path_str(&dir), "--key", path_str(key), "-o", out]);
        r.assert_code(0, "pack");
        let p = self.work().join(out);
        assert!(p.is_file(), "{}", r.both());
        p
    }

    /// `rjs-sign status --json`, parsed.
    fn status(&self) -> JobList {
        let out = self.run(&["status", "--json"]);
        out.assert_code(0, "status --json");
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not a job list: {e}\n{}", out.both()))
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// The sample job folders (`samples/build.sh`).
fn samples() -> PathBuf {
    let dir = rjs_e2e::samples_dir();
    assert!(
        dir.join("mandelbrot").join("manifest.json").is_file(),
        "{} is missing: build the samples first (samples/build.sh)",
        dir.display()
    );
    dir
}

/// A TOML basic string (JSON escaping is valid TOML for these values).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A web server with alice enrolled from a key made by `rjs-sign keygen`, and alice's
/// `$RJS_HOME/config.toml` pointing at it.
struct Grid {
    ws: WebServer,
    alice: User,
    alice_key: PathBuf,
}

fn grid(extra_args: &[&str]) -> Grid {
    let mut ws = WebServer::init().unwrap();
    let alice = User::new();
    let alice_key = alice.keygen("alice");
    let pubkey = alice.keys().join("alice.pub");
    ws.admin(&["author", "add", "alice", "--key", path_str(&pubkey)])
        .unwrap();
    ws.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    ws.start().unwrap();
    std::fs::write(
        alice.rjs_home().join("config.toml"),
        format!(
            "server = {}\nca = {}\nkey = {}\n",
            toml_str(&format!("https://{}", ws.addr)),
            toml_str(path_str(&ws.ca_pem())),
            toml_str(path_str(&alice_key)),
        ),
    )
    .unwrap();
    Grid {
        ws,
        alice,
        alice_key,
    }
}

fn count(jobs: &JobList, state: JobState) -> usize {
    jobs.jobs.iter().filter(|j| j.state == state).count()
}

#[test]
fn daily_user_uploads_with_settings_from_the_config_file_and_sees_status() {
    let g = grid(&[]);
    let a = &g.alice;

    // whoami: the settings work and the server knows the key.
    let out = a.run(&["whoami"]);
    out.assert_code(0, "whoami");
    assert!(out.stdout.starts_with("alice ("), "{}", out.both());
    out.assert_stdout_has(&g.ws.addr);

    let bundle = a.pack("mandelbrot", &g.alice_key, "mandelbrot.rjs");
    let id = sha256_hex(&std::fs::read(&bundle).unwrap());

    // First upload, no --server/--ca/--key: everything from $RJS_HOME/config.toml.
    let out = a.run(&["upload", "mandelbrot.rjs"]);
    out.assert_code(0, "upload");
    out.assert_stdout_has("uploaded mandelbrot (8 tasks)");
    out.assert_stdout_has(&format!("bundle {id}"));
    out.assert_stdout_has("jobs 1-8 (tasks 0-7)");
    assert!(!out.stderr.contains("warning"), "{}", out.both());

    // Again: already there, the same jobs, nothing new queued.
    let out = a.run(&["upload", "mandelbrot.rjs"]);
    out.assert_code(0, "second upload");
    out.assert_stdout_has("already uploaded");
    out.assert_stdout_has(&format!("bundle {id}"));
    out.assert_stdout_has("jobs 1-8 (tasks 0-7)");

    let jobs = a.status();
    assert_eq!(jobs.jobs.len(), 8, "{jobs:?}");
    assert_eq!(count(&jobs, JobState::Queued), 8, "{jobs:?}");
    let mut tasks: Vec<u32> = jobs.jobs.iter().map(|j| j.task).collect();
    tasks.sort();
    assert_eq!(tasks, (0..8).collect::<Vec<_>>());
    assert!(
        jobs.jobs.iter().all(|j| j.bundle_id == id
            && j.name == "mandelbrot"
            && j.tasks == 8
            && j.attempts == 0)
    );

    // The table form says the same.
    let out = a.run(&["status"]);
    out.assert_code(0, "status");
    out.assert_stdout_has("8 jobs: 8 queued, 0 leased, 0 done, 0 failed");

    // Nothing was written outside the test's folders: not even under the fake home.
    assert!(!a.home().join(".config").exists());
}

#[test]
fn answers_wait_downloads_what_a_lookup_posts_and_reports_the_failure() {
    let g = grid(&["--max-attempts", "1"]);
    let a = &g.alice;
    let lab = Lab::enrol(&g.ws);

    a.pack("mandelbrot", &g.alice_key, "mandelbrot.rjs");
    a.run(&["upload", "mandelbrot.rjs"])
        .assert_code(0, "upload");
    let bundle_id = a.status().jobs[0].bundle_id.clone();
    let out_dir = a.work().join("answers");
    let answer_dir = out_dir.join(format!("mandelbrot-{}", &bundle_id[..12]));

    // The author waits for the answers while the lookup works.
    let waiter = Running::spawn(&mut a.cmd(&[
        "answers",
        "--wait",
        "--timeout",
        "60",
        "-o",
        path_str(&out_dir),
    ]));
    // It has read its settings and connected once the answer folder exists.
    rjs_harness::wait::poll_until(
        Duration::from_secs(30),
        Duration::from_millis(20),
        || out_dir.is_dir(),
        |&made| made,
        |_| {
            format!(
                "answers --wait did not create {} within 30 s",
                out_dir.display()
            )
        },
    );

    let leases = lab.lease_all(&bundle_id);
    // Answers for tasks 0-6; task 7 fails.
    let posted = lab.post_answers(&leases[..7]);
    let reason = "node lost: the disk caught fire";
    lab.fail_for_good(leases[7].job_id, reason);

    // The waiting author sees everything finish: exit 1 (one task failed), naming the reason.
    let out = waiter.finish(COMMAND_LIMIT);
    out.assert_code(1, "answers --wait");
    out.assert_stdout_has(reason);
    out.assert_stdout_has("8 tasks): 7 done, 1 failed, 0 not finished");
    assert!(
        out.stdout.contains("task 7 (job ") && out.stdout.contains("failed after 1 attempt:"),
        "{}",
        out.both()
    );
    out.assert_stdout_has("7 answers downloaded");
    assert_downloaded_exactly(&out_dir, &answer_dir, &posted);

    // Again, without --wait: nothing new to download; still exit 1 (a task failed).
    let out = a.run(&["answers", "-o", path_str(&out_dir)]);
    out.assert_code(1, "answers again");
    out.assert_stdout_has("0 answers downloaded (0 bytes), 7 already in");
    out.assert_stdout_has(reason);
    let out = a.run(&["answers", "--json", "-o", path_str(&out_dir)]);
    out.assert_code(1, "answers --json again");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["downloaded"], 0, "{v}");
    assert_eq!(v["already_present"], 7, "{v}");
    assert_eq!(v["bundles"][0]["failed"][0]["task"], 7, "{v}");
    assert_eq!(v["bundles"][0]["failed"][0]["reason"], reason, "{v}");

    // The status agrees: 7 done with outcome and node, 1 failed with the reason.
    let jobs = a.status();
    assert_eq!(count(&jobs, JobState::Done), 7);
    assert_eq!(count(&jobs, JobState::Failed), 1);
    for j in &jobs.jobs {
        if j.state == JobState::Done {
            assert_eq!(j.outcome.as_deref(), Some("exit 0"));
            assert_eq!(j.node, Some(format!("node-{}", j.task % 3)));
            let body = &posted.iter().find(|(t, _)| *t == j.task).unwrap().1;
            assert_eq!(j.answer_bytes, Some(body.len() as u64));
        } else {
            assert_eq!(j.task, 7);
            assert_eq!(j.reason.as_deref(), Some(reason));
        }
    }
}

/// This test acting as an enrolled lookup server (mutual TLS).
struct Lab<'a> {
    ws: &'a WebServer,
    client: reqwest::blocking::Client,
}

impl<'a> Lab<'a> {
    /// Enrols lookup `lab-1` at `ws`.
    fn enrol(ws: &'a WebServer) -> Self {
        let creds = ws.add_lookup("lab-1").unwrap();
        let client = ws.lookup_client(&creds).unwrap();
        Lab { ws, client }
    }

    fn lease(&self, body: Value) -> Vec<api::Lease> {
        let r = self
            .client
            .post(self.ws.url("/lookup/v1/lease"))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<api::LeaseResponse>().unwrap().leases
    }

    /// Leases everything: the 8 tasks of `bundle_id`, in task order.
    fn lease_all(&self, bundle_id: &str) -> Vec<api::Lease> {
        let mut leases = self.lease(json!({"max": 16, "groups": ["/compute"], "lease_secs": 120}));
        leases.sort_by_key(|l| l.task);
        assert_eq!(leases.len(), 8, "{leases:?}");
        assert!(leases.iter().all(|l| l.bundle_id == bundle_id));
        leases
    }

    /// Posts an answer for each lease, each distinct bytes (binary, not only text), from node
    /// `node-<task % 3>`; returns them by task.
    fn post_answers(&self, leases: &[api::Lease]) -> Vec<(u32, Vec<u8>)> {
        let mut posted = Vec::new();
        for l in leases {
            let mut body = format!("PK fake answer of task {} ", l.task).into_bytes();
            body.extend((0..=255u8).cycle().take(1000 + 37 * l.task as usize));
            body.extend(rand::random::<[u8; 16]>());
            let r = self
                .client
                .put(self.ws.url(&format!("/lookup/v1/jobs/{}/answer", l.job_id)))
                .header(api::H_OUTCOME, "exit 0")
                .header(api::H_NODE, format!("node-{}", l.task % 3))
                .body(body.clone())
                .send()
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            posted.push((l.task, body));
        }
        posted
    }

    /// Reports job `job` failed for `reason`: with --max-attempts 1 the first failure is
    /// final; keeps reporting (bounded) in case the server requeued it.
    fn fail_for_good(&self, mut job: i64, reason: &str) {
        for _ in 0..5 {
            let r = self
                .client
                .post(self.ws.url(&format!("/lookup/v1/jobs/{job}/failure")))
                .json(&json!({ "reason": reason }))
                .send()
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let f: api::FailureResponse = r.json().unwrap();
            if f.state == JobState::Failed {
                assert_eq!(f.attempts, 1, "--max-attempts 1");
                return;
            }
            let again = self.lease(json!({"max": 1, "lease_secs": 60}));
            assert_eq!(again.len(), 1, "the requeued job comes back");
            job = again[0].job_id;
        }
        panic!("task 7 never reached the failed state");
    }
}

/// Exactly the `posted` bytes in `answer_dir`, one file per answered task, nothing else (no
/// temporary files), and nothing else in `out_dir`.
fn assert_downloaded_exactly(out_dir: &Path, answer_dir: &Path, posted: &[(u32, Vec<u8>)]) {
    for (task, body) in posted {
        let f = answer_dir.join(format!("task-{task}.zip"));
        let got = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            got == *body,
            "{} differs from the posted answer",
            f.display()
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(answer_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let expected: Vec<String> = (0..7).map(|t| format!("task-{t}.zip")).collect();
    assert_eq!(names, expected);
    assert_eq!(std::fs::read_dir(out_dir).unwrap().count(), 1);
}

#[test]
fn the_cli_refuses_foreign_signers_tampered_bundles_unknown_keys_and_plain_http() {
    let g = grid(&[]);
    let a = &g.alice;

    // One good upload, so that "nothing reached the server" means "still only its jobs".
    a.pack("hello", &g.alice_key, "hello.rjs");
    a.run(&["upload", "hello.rjs"]).assert_code(0, "upload");
    let baseline = a.status().jobs.len();
    assert!(baseline > 0);

    // A bundle signed by bob (enrolled too), uploaded with alice's settings: the server refuses.
    let bob_key = a.keygen("bob");
    g.ws.admin(&[
        "author",
        "add",
        "bob",
        "--key",
        path_str(&a.keys().join("bob.pub")),
    ])
    .unwrap();
    a.pack("mandelbrot", &bob_key, "bobs.rjs");
    let out = a.run(&["upload", "bobs.rjs"]);
    assert_ne!(out.code, Some(0), "{}", out.both());
    assert!(
        out.stderr.contains("server refused") && out.stderr.contains("(signer-mismatch)"),
        "{}",
        out.both()
    );

    // A tampered bundle: refused here, before anything is sent.
    let good = a.pack("mandelbrot", &g.alice_key, "mandelbrot.rjs");
    let mut bytes = std::fs::read(&good).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x01;
    std::fs::write(a.work().join("tampered.rjs"), &bytes).unwrap();
    let out = a.run(&["upload", "tampered.rjs"]);
    out.assert_code(1, "upload of a tampered bundle");
    assert!(
        out.stderr.contains("not uploading") && out.stderr.contains("REFUSED"),
        "{}",
        out.both()
    );
    assert!(!out.stderr.contains("server refused"), "{}", out.both());

    // An unknown author (key never enrolled), given as a flag over the config file's key.
    let carol_key = a.keygen("carol");
    a.pack("mandelbrot", &carol_key, "carols.rjs");
    let out = a.run(&["upload", "carols.rjs", "--key", path_str(&carol_key)]);
    assert_ne!(out.code, Some(0), "{}", out.both());
    assert!(out.stderr.contains("unknown-author"), "{}", out.both());

    // Plain http://, as a flag and in a configuration file: refused before any connection.
    let http = format!("http://{}", g.ws.addr);
    let out = a.run(&["upload", "mandelbrot.rjs", "--server", &http]);
    assert_ne!(out.code, Some(0), "{}", out.both());
    assert!(out.stderr.contains("HTTPS only"), "{}", out.both());
    let http_cfg = a.work().join("http.toml");
    std::fs::write(
        &http_cfg,
        format!(
            "server = {}\nca = {}\nkey = {}\n",
            toml_str(&http),
            toml_str(path_str(&g.ws.ca_pem())),
            toml_str(path_str(&g.alice_key)),
        ),
    )
    .unwrap();
    let out = a.run(&["upload", "mandelbrot.rjs", "--config", path_str(&http_cfg)]);
    assert_ne!(out.code, Some(0), "{}", out.both());
    assert!(
        out.stderr.contains("HTTPS only") && out.stderr.contains("http.toml"),
        "{}",
        out.both()
    );
    let out = a.run(&["config", "set", "server", &http]);
    assert_ne!(out.code, Some(0), "{}", out.both());

    // None of it reached the store: alice still has only the good upload's jobs, and bob none.
    assert_eq!(a.status().jobs.len(), baseline);
    let out = a.run(&["status", "--json", "--key", path_str(&bob_key)]);
    out.assert_code(0, "bob's status");
    let bobs: JobList = serde_json::from_str(&out.stdout).unwrap();
    assert!(bobs.jobs.is_empty(), "{bobs:?}");
    // The config file was left as it was by the refused `config set`.
    let cfg = std::fs::read_to_string(a.rjs_home().join("config.toml")).unwrap();
    assert!(cfg.contains(&format!("https://{}", g.ws.addr)), "{cfg}");
}

/// A module no node could run — one importing what the sandbox does not provide, one needing
/// a feature it leaves off (threads) — is refused by `rjs-sign pack`, by `rjs-sign verify`
/// and by the web server, with the first reason, before any node sees it. A folder input is
/// packed whole and verifies.
#[test]
fn modules_the_nodes_would_refuse_are_refused_before_upload() {
    let g = grid(&[]);
    let a = &g.alice;
    let key = rjs_signer::KeyPair::load(&g.alice_key).unwrap();
    let job = |name: &str, module: &[u8]| -> PathBuf {
        let dir = a.work().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("job.wasm"), module).unwrap();
        std::fs::write(
            dir.join("manifest.json"),
            json!({"format": 1, "name": name, "entry": "job.wasm"}).to_string(),
        )
        .unwrap();
        dir
    };
    let cases = [
        (
            "host-call",
            rjs_harness::modules::importing("env", "host_call"),
            "imports `env::host_call`, which the sandbox does not provide",
        ),
        (
            "threads",
            rjs_harness::modules::with_shared_memory(),
            "threads",
        ),
        (
            "not-wasi",
            rjs_harness::modules::importing("wasi_snapshot_preview1", "sock_open"),
            "sock_open",
        ),
    ];
    for (name, module, why) in &cases {
        // pack: refused, nothing written.
        let dir = job(name, module);
        let out = a.run(&[
            "pack",
            path_str(&dir),
            "--key",
            path_str(&g.alice_key),
            "-o",
            &format!("{name}.rjs"),
        ]);
        assert_ne!(out.code, Some(0), "{}", out.both());
        assert!(
            out.stderr.contains("cannot run on the grid's nodes") && out.stderr.contains(why),
            "{name}: {}",
            out.both()
        );
        assert!(!a.work().join(format!("{name}.rjs")).exists());

        // A bundle signed without pack's check: verify refuses it with the rule.
        let mut b = rjs_signer::BundleBuilder::new();
        b.add(
            "manifest.json",
            json!({"format": 1, "name": name, "entry": "job.wasm"})
                .to_string()
                .into_bytes(),
        )
        .unwrap();
        b.add("job.wasm", module.clone()).unwrap();
        let bytes = b.sign(&key, "alice", rjs_signer::unix_now()).unwrap();
        let path = a.work().join(format!("{name}-signed.rjs"));
        std::fs::write(&path, &bytes).unwrap();
        let out = a.run(&["verify", path_str(&path)]);
        assert_ne!(out.code, Some(0), "{}", out.both());
        assert!(
            out.stdout.contains("REFUSED bad-module (job.wasm)") && out.stdout.contains(why),
            "{name}: {}",
            out.both()
        );

        // The web server refuses it too, and queues nothing.
        let author =
            g.ws.author(rjs_signer::KeyPair::load(&g.alice_key).unwrap())
                .unwrap();
        let resp = upload_raw(&author, &bytes).unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        let body: Value = resp.json().unwrap();
        let error = body["error"].as_str().unwrap_or_default();
        assert_eq!(body["code"], "invalid-bundle", "{body}");
        assert!(
            error.contains("bad-module") && error.contains(why),
            "{error}"
        );
    }
    assert!(a.status().jobs.is_empty(), "nothing reached the queue");

    // A folder input, packed whole, each file signed; it verifies.
    let dir = job("with-data", &rjs_signer::wasm::empty_command(&[]));
    std::fs::create_dir_all(dir.join("data/sub")).unwrap();
    std::fs::write(dir.join("data/a.txt"), b"a").unwrap();
    std::fs::write(dir.join("data/sub/b.txt"), b"b").unwrap();
    let manifest = json!({"format": 1, "name": "with-data", "entry": "job.wasm",
        "inputs": ["data/"], "stdin": "data/sub/b.txt"});
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    let pack = |out: &str| {
        a.run(&[
            "pack",
            path_str(&dir),
            "--key",
            path_str(&g.alice_key),
            "-o",
            out,
        ])
    };
    pack("with-data.rjs").assert_code(0, "pack with a folder input");
    let out = a.run(&["verify", "with-data.rjs"]);
    out.assert_code(0, "verify");
    let out = a.run(&["inspect", "with-data.rjs"]);
    out.assert_code(0, "inspect");
    out.assert_stdout_has("data/sub/b.txt");
    // Naming the folder without its slash says how to.
    let manifest = json!({"format": 1, "name": "with-data", "entry": "job.wasm",
        "inputs": ["data"]});
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    let out = pack("no-slash.rjs");
    assert_ne!(out.code, Some(0), "{}", out.both());
    assert!(out.stderr.contains("name it \"data/\""), "{}", out.both());

    // Limits above what nodes accept by default: uploaded, with a warning that says so.
    let manifest = json!({"format": 1, "name": "greedy", "entry": "job.wasm",
        "limits": {"memory_bytes": 2u64 << 30}});
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    pack("greedy.rjs").assert_code(0, "pack greedy");
    let out = a.run(&["upload", "greedy.rjs"]);
    out.assert_code(0, "upload greedy");
    assert!(
        out.stderr.contains(
            "warning: greedy.rjs asks for memory_bytes 2147483648 (nodes accept at most \
             1073741824 unless their owner allows more)"
        ),
        "{}",
        out.both()
    );
    out.assert_stdout_has("uploaded greedy");
}
