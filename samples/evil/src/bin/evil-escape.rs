//! Misbehaving job: tries to get out of its sandbox (read host files, write outside its
//! directory, use the network). Prints one line per attempt, `BLOCKED: <what>: <error>` or
//! `ESCAPED: <what>`; exits 0 if every attempt was blocked, 1 if any escaped.

use std::io::Read;
use std::net::{TcpStream, UdpSocket};
use std::process::ExitCode;

/// One escape attempt: what it tries, and the attempt (`Ok` = it got out).
type Attempt = (&'static str, fn() -> std::io::Result<()>);

fn main() -> ExitCode {
    let attempts: [Attempt; 5] = [
        ("read /etc/passwd", || read("/etc/passwd")),
        ("read ../../etc/passwd", || read("../../etc/passwd")),
        ("write /var/tmp/rjs-evil-escaped", || {
            std::fs::write("/var/tmp/rjs-evil-escaped", b"evil-escape was here\n")
        }),
        ("connect tcp 127.0.0.1:80", || {
            TcpStream::connect(("127.0.0.1", 80)).map(drop)
        }),
        ("bind udp 0.0.0.0:0", || {
            UdpSocket::bind(("0.0.0.0", 0)).map(drop)
        }),
    ];
    let mut escaped = false;
    for (what, attempt) in attempts {
        match attempt() {
            Ok(()) => {
                escaped = true;
                println!("ESCAPED: {what}");
            }
            Err(e) => println!("BLOCKED: {what}: {e}"),
        }
    }
    if escaped {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn read(path: &str) -> std::io::Result<()> {
    let mut contents = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut contents)?;
    Ok(())
}
