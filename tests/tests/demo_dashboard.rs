//! `rjs demo --keep`: the grid stays up after the job, and the printed login link reaches its
//! dashboard from this machine's own network (through the port the demo forwards into its
//! private namespace); Enter prints a fresh link; Ctrl-C stops everything.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rjs_e2e::bin;

/// Exit status of `rjs demo` when no private network namespace can be made.
const EXIT_NO_NETNS: i32 = 2;

#[test]
fn a_kept_demo_serves_its_dashboard_to_this_machine_until_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let grid_dir = dir.path().join("grid");
    let mut child = Command::new(bin("rjs"))
        .arg("demo")
        .arg("--keep")
        .arg("--dir")
        .arg(&grid_dir)
        .arg("--out")
        .arg(dir.path().join("m.png"))
        .args(["--timeout", "120"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            println!("[demo] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_link = |what: &str| -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(240);
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    if let Some(url) = l.trim().strip_prefix("https://")
                        && url.contains("/dashboard/login?token=")
                    {
                        return Some(format!("https://{url}"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
        panic!("no {what} within 240 s");
    };
    let Some(link) = next_link("login link") else {
        let status = child.wait().unwrap();
        if status.code() == Some(EXIT_NO_NETNS) {
            eprintln!("NOTE: rjs demo cannot run here (no private network namespace)");
            return;
        }
        panic!("rjs demo ended without a link: {status}");
    };
    assert!(link.starts_with("https://127.0.0.1:"), "{link}");

    // From this machine's network: the login page, then the sign-in.
    let client = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(
            rjs_e2e::client_tls_from_files(&grid_dir.join("webserver").join("ca.pem"), None)
                .unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let page = client.get(&link).send().unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().unwrap().contains("Sign in"));
    let token = link.split("token=").nth(1).unwrap();
    let origin = link.split("/dashboard").next().unwrap().to_owned();
    let signed_in = client
        .post(format!("{origin}/dashboard/login"))
        .header("origin", &origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let list = client
        .get(format!("{origin}/dashboard/submissions"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(list.status(), 200);
    assert!(list.text().unwrap().contains("mandelbrot"));

    // Enter: a fresh link.
    child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    let fresh = next_link("fresh link").expect("a fresh link");
    assert_ne!(fresh, link);

    // Ctrl-C stops the grid; the demo ends.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "rjs demo did not stop after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    assert!(
        client.get(&link).send().is_err(),
        "the dashboard is still up"
    );
}
