//! A TCP port on this machine's own network that leads into a private network namespace: bind
//! it with [`HostPort::bind`] *before* entering the namespace (a socket stays in the namespace
//! it was made in), then [`HostPort::forward_to`] an address inside it. `rjs demo --keep` uses
//! it so that a browser on this machine reaches the dashboard of a grid whose mDNS never leaves
//! its namespace. Bytes are copied as they are (TLS stays end to end); at most
//! [`MAX_CONNECTIONS`] at a time, each closed after [`IDLE`] without traffic.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// Connections forwarded at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection without traffic either way for this long is closed.
pub const IDLE: Duration = Duration::from_secs(300);
/// Time to connect to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A listening port on 127.0.0.1 of the namespace it was bound in.
pub struct HostPort {
    listener: TcpListener,
}

impl HostPort {
    /// Binds 127.0.0.1 on a free port (in the calling thread's network namespace).
    pub fn bind() -> Result<HostPort> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1")?;
        Ok(HostPort { listener })
    }

    pub fn addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("reading the bound address")
    }

    /// Forwards every connection to `target` (reached from the calling thread's namespace)
    /// until the returned [`Forwarder`] is dropped.
    pub fn forward_to(self, target: SocketAddr) -> Result<Forwarder> {
        let addr = self.addr()?;
        self.listener
            .set_nonblocking(true)
            .context("setting the listener non-blocking")?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let (s, a) = (stop.clone(), active.clone());
        let listener = self.listener;
        let thread = std::thread::Builder::new()
            .name("forward-accept".into())
            .spawn(move || accept_loop(listener, target, s, a))
            .context("starting the forwarder")?;
        Ok(Forwarder {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
) {
    while !stop.load(Ordering::Relaxed) {
        if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        match listener.accept() {
            Ok((client, _)) => {
                active.fetch_add(1, Ordering::Relaxed);
                let a = active.clone();
                let spawned = std::thread::Builder::new()
                    .name("forward".into())
                    .spawn(move || {
                        let _ = pipe(client, target);
                        a.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Copies both ways until either side closes or idles out.
fn pipe(client: TcpStream, target: SocketAddr) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    for s in [&client, &server] {
        s.set_read_timeout(Some(IDLE))?;
        s.set_write_timeout(Some(IDLE))?;
        s.set_nodelay(true)?;
    }
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    let up = std::thread::Builder::new()
        .name("forward-up".into())
        .spawn(move || copy(c2, s2))?;
    copy(server, client);
    let _ = up.join();
    Ok(())
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// A running forwarder; stops accepting when dropped (connections in flight finish).
pub struct Forwarder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Where to connect on this machine.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_go_both_ways_through_the_forwarder() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        });
        let port = HostPort::bind().unwrap();
        let fwd = port.forward_to(target).unwrap();
        let mut c = TcpStream::connect(fwd.addr()).unwrap();
        c.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");
    }
}
