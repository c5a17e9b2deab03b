//! A private network namespace for the local grid and for tests: only a loopback link, with
//! multicast, so that mDNS announcements and browsing never leave this machine.
//!
//! The mdns-sd daemon joins its multicast groups on every interface as soon as it is created,
//! before any interface restriction applies: a process that announces or browses must never
//! run on the host's own network stack in a demo or test. [`enter_private`] moves the calling
//! thread into a fresh namespace; every process it starts afterwards inherits it.
//!
//! A test enters one in a child process, never in the test runner itself: the head of such a
//! test is [`isolated_child`], which re-executes the test binary to run just that test.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{Managed, tail};

/// How the namespace was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// `unshare(CLONE_NEWNET)` (the process may administer namespaces: root or
    /// `CAP_SYS_ADMIN`).
    NetNamespace,
    /// `unshare(CLONE_NEWUSER | CLONE_NEWNET)`: an unprivileged user namespace owning the new
    /// network namespace, with this user mapped to itself.
    UserAndNetNamespace,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::NetNamespace => "private network namespace",
            Isolation::UserAndNetNamespace => "private network namespace (in a user namespace)",
        })
    }
}

/// Moves the calling thread into a new network namespace holding only `lo`, brings `lo` up
/// with multicast and routes `224.0.0.0/4` to it.
///
/// Call it before any other thread exists (before a tokio runtime or an HTTP client is built):
/// a network namespace belongs to a thread, and only threads and processes created by this
/// thread afterwards share it; the user-namespace fallback even requires a single-threaded
/// process. Fails with the operating system's reason when no namespace can be made (no
/// privilege, user namespaces disabled, seccomp in a container).
pub fn enter_private() -> Result<Isolation> {
    let isolation = unshare().context("creating a private network namespace")?;
    configure_loopback()
        .context("setting up the loopback link of the private network namespace")?;
    let links = links().context("listing the links of the new network namespace")?;
    if links != ["lo"] {
        bail!("the new network namespace has links {links:?}, expected only lo; refusing to go on");
    }
    *ENTERED.lock().unwrap_or_else(|e| e.into_inner()) = current_ns();
    Ok(isolation)
}

/// The network links of the calling thread's namespace (from `/proc/thread-self/net/dev`).
pub fn links() -> Result<Vec<String>> {
    let path = "/proc/thread-self/net/dev";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(text
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect())
}

/// True if the calling thread's namespace has no link but `lo`.
pub fn is_private() -> bool {
    matches!(links(), Ok(l) if l == ["lo"])
}

/// The namespace [`enter_private`] made last in this process (`net:[inode]`).
static ENTERED: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

fn current_ns() -> Option<std::path::PathBuf> {
    std::fs::read_link("/proc/thread-self/ns/net").ok()
}

/// True if the calling thread is in a private namespace: one with no link but `lo`
/// ([`is_private`]), or the one [`enter_private`] made in this process, to which a test may
/// since have added links of its own ([`crate::hosts`]).
pub fn is_isolated() -> bool {
    if is_private() {
        return true;
    }
    let entered = ENTERED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    entered.is_some() && entered == current_ns()
}

fn unshare() -> Result<Isolation> {
    // SAFETY: unshare only changes this thread's namespace membership.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        return Ok(Isolation::NetNamespace);
    }
    let first = io::Error::last_os_error();
    if first.raw_os_error() != Some(libc::EPERM) {
        return Err(anyhow::Error::new(first).context("unshare(CLONE_NEWNET)"));
    }
    // Not privileged: a user namespace of our own owns the network namespace, and gives this
    // thread the capabilities to set it up.
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: as above; the kernel refuses (EINVAL) if the process has other threads.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
        let second = io::Error::last_os_error();
        let hint = if second.raw_os_error() == Some(libc::EINVAL) {
            " (the process must still be single-threaded: enter the namespace first)"
        } else {
            " (unprivileged user namespaces may be disabled: kernel.unprivileged_userns_clone, \
             user.max_user_namespaces, or a container's seccomp profile)"
        };
        return Err(anyhow::Error::new(second).context(format!(
            "unshare(CLONE_NEWUSER | CLONE_NEWNET) failed{hint}; unshare(CLONE_NEWNET) had \
             failed with: {first}"
        )));
    }
    write_proc("/proc/self/setgroups", "deny")?;
    write_proc("/proc/self/uid_map", &format!("{uid} {uid} 1"))?;
    write_proc("/proc/self/gid_map", &format!("{gid} {gid} 1"))?;
    Ok(Isolation::UserAndNetNamespace)
}

fn write_proc(path: &str, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {text:?} to {path}"))
}

/// `ip link set lo up multicast on; ip route add 224.0.0.0/4 dev lo`, done with ioctls so
/// that it works without iproute2 and with the capabilities of this thread (a program run
/// in a user namespace as a non-root id would lose them at exec).
fn configure_loopback() -> Result<()> {
    let sock = Socket::dgram().context("opening a socket for interface ioctls")?;
    let lo = c"lo";
    let mut req = ifreq(lo);
    // SAFETY: `req` is a valid ifreq naming an interface; SIOCGIFFLAGS fills its flags.
    if unsafe { libc::ioctl(sock.0, libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error()).context("reading the flags of lo (SIOCGIFFLAGS)");
    }
    // SAFETY: the union member written by SIOCGIFFLAGS.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_MULTICAST) as libc::c_short;
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.0, libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io::Error::last_os_error())
            .context("bringing lo up with multicast (SIOCSIFFLAGS)");
    }
    add_multicast_route(&sock, lo).context("routing 224.0.0.0/4 to lo (SIOCADDRT)")
}

/// `struct rtentry` of `<net/route.h>` (Linux; the `libc` crate has it only for musl).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

const RTF_UP: libc::c_ushort = 0x0001;

fn add_multicast_route(sock: &Socket, dev: &CStr) -> Result<()> {
    let inet = |addr: [u8; 4]| -> libc::sockaddr {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(addr),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in and sockaddr have the same size; this is how the C API is used.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    };
    let mut name = dev.to_bytes_with_nul().to_vec();
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: inet([224, 0, 0, 0]),
        rt_gateway: inet([0, 0, 0, 0]),
        rt_genmask: inet([240, 0, 0, 0]),
        rt_flags: RTF_UP,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: name.as_mut_ptr().cast(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: `route` is a valid rtentry whose device name outlives the call.
    if unsafe { libc::ioctl(sock.0, libc::SIOCADDRT, &mut route) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e.into());
        }
    }
    Ok(())
}

fn ifreq(name: &CStr) -> libc::ifreq {
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.to_bytes()) {
        *dst = *src as libc::c_char;
    }
    req
}

struct Socket(libc::c_int);

impl Socket {
    fn dgram() -> io::Result<Socket> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(Socket(fd))
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.0) };
    }
}

/// The variable naming the test a re-executed test binary is to run isolated.
const CHILD: &str = "RJS_ISOLATED_TEST";

/// Lines of an isolated child's output kept for its verdict and messages (of its last 16 KiB).
const OUTPUT_LINES: usize = 200;

/// Held while an isolated child runs: they take turns (on a small machine, grids running side
/// by side would make each other's timings meaningless).
static ONE_CHILD_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The head of a test that must run in a private network namespace:
///
/// ```ignore
/// #[test]
/// fn announces() {
///     if !rjs_harness::netns::isolated_child("announces", Duration::from_secs(60)) {
///         return;
///     }
///     // Here: in a child process, in a private network namespace.
/// }
/// ```
///
/// In the test runner it re-executes this test binary to run just `test` (its full name, as
/// `--exact` takes it) within `timeout` ([`run_isolated`]), checks its verdict and returns
/// `false`. In that child it enters a private namespace ([`enter_private`], before the test
/// starts any thread) and returns `true`; where no namespace can be made it prints a `SKIP:`
/// line, which the parent reports, and returns `false`.
pub fn isolated_child(test: &str, timeout: Duration) -> bool {
    if !std::env::var(CHILD).is_ok_and(|t| t == test) {
        run_isolated(test, timeout);
        return false;
    }
    match enter_private() {
        Ok(_) => true,
        Err(e) => {
            println!(
                "SKIP: no private network namespace here: {}",
                rjs_cmd::chain(e.as_ref())
            );
            false
        }
    }
}

/// Runs `test` (a test of this executable, ignored or not) in a child process, in a process
/// group of its own, and panics unless it passed within `timeout` (the whole group is killed
/// then). One such child runs at a time.
pub fn run_isolated(test: &str, timeout: Duration) {
    let _turn = ONE_CHILD_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = tempfile::tempdir().expect("a temporary folder for the child's output");
    let (out_path, err_path) = (dir.path().join("child.out"), dir.path().join("child.err"));
    let spawned = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--include-ignored"])
        .arg("--test-threads=1")
        .env(CHILD, test)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("the child's stdout file"))
        .stderr(File::create(&err_path).expect("the child's stderr file"))
        .process_group(0)
        .spawn()
        .expect("re-executing the test binary");
    let mut child = Managed::adopt(test, spawned);
    // The end of what it printed (its verdict, a SKIP line, a failure): bounded, however
    // much the test wrote.
    let read = |p: &std::path::Path| tail(p, OUTPUT_LINES);
    let waited = child.wait_until(Instant::now() + timeout);
    let Some(status) = waited.expect("waiting for the child") else {
        // The whole group: the test and the servers it started.
        // SAFETY: kill(2) on the process group of our own unreaped child.
        unsafe { libc::kill(-child.pid(), libc::SIGKILL) };
        child.kill9();
        crate::hosts::sweep(child.pid() as u32);
        panic!("{test} took longer than {timeout:?}:\n{}", read(&out_path));
    };
    // Test hosts the child made and could not remove (it failed, or was killed).
    let swept = crate::hosts::sweep(child.pid() as u32);
    if swept > 0 {
        eprintln!("{test}: removed {swept} network namespaces it left behind");
    }
    let (out, err) = (read(&out_path), read(&err_path));
    eprintln!("{test}: child ran {:.1?}", started.elapsed());
    assert!(status.success(), "{test} failed ({status}):\n{out}\n{err}");
    // Figures the test printed for the reader (`figure: …`), straight to stderr: the test
    // runner captures only what the print macros write, and these are wanted in CI's log.
    for line in out.lines().filter_map(|l| l.split_once("figure: ")) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{test}: {}", line.1);
    }
    if let Some(line) = out.lines().find(|l| l.contains("SKIP:")) {
        eprintln!("NOTE: {test}: {line}");
        return;
    }
    assert!(
        out.contains("test result: ok. 1 passed"),
        "{test} did not run:\n{out}\n{err}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};

    /// Entering changes the calling thread for good: the test runs in a child process
    /// ([`isolated_child`]), so the test runner's other threads are never involved.
    #[test]
    fn a_private_namespace_has_only_loopback_with_multicast() {
        let test = "netns::tests::a_private_namespace_has_only_loopback_with_multicast";
        if !isolated_child(test, Duration::from_secs(60)) {
            return;
        }
        assert_eq!(links().unwrap(), ["lo"]);
        assert!(is_private());
        let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
        assert!(
            routes.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 7 && f[0] == "lo" && f[1] == "000000E0" && f[7] == "000000F0"
            }),
            "no 224.0.0.0/4 route to lo:\n{routes}"
        );
        // Multicast sent by the routing table (no IP_MULTICAST_IF) loops back on lo.
        let group = Ipv4Addr::new(239, 255, 71, 83);
        let rx = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        rx.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = rx.local_addr().unwrap().port();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        tx.send_to(b"rjs netns test", (group, port)).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"rjs netns test");
    }
}
