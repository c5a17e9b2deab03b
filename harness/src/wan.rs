//! A WAN link made in user space: a TCP proxy that holds every chunk of bytes for a set time
//! in each direction, as a link of that round-trip time would (this machine's kernel has no
//! netem). The multi-host tests put it between the lookup's network and the web server's:
//! the lookup dials the proxy, the proxy the web server.
//!
//! It also reads the first TLS record of each connection (a ClientHello, sent in the clear)
//! and counts full handshakes and resumptions (a ClientHello offering a `pre_shared_key`),
//! and it can cut every open connection at once. Loss and partitions are not made here:
//! iptables rules in the namespaces ([`crate::hosts`]) drop real packets, so that TCP
//! retransmits as it would.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Chunks in flight per direction of one connection (of up to 16 KiB each) before the proxy
/// stops reading: the link's buffer.
const IN_FLIGHT_CHUNKS: usize = 2048;
/// Time to connect to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections handled at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 256;

/// What went through the link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WanStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// TLS handshakes without a resumption offer (ClientHello without `pre_shared_key`).
    pub full_handshakes: u64,
    /// TLS handshakes offering to resume a session.
    pub resumptions: u64,
    /// Bytes from the client side to the target, and back.
    pub bytes_up: u64,
    pub bytes_down: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    full: AtomicU64,
    resumed: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
}

struct Shared {
    target: SocketAddr,
    /// One-way delay in microseconds.
    delay_us: AtomicU64,
    stop: AtomicBool,
    counters: Counters,
    /// Both sockets of every open connection (to cut them).
    open: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
}

/// A running delaying proxy; stops when dropped (open connections are cut).
pub struct WanLink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl WanLink {
    /// Listens on `listen` (in the calling thread's network namespace) and forwards every
    /// connection to `target`, holding bytes `one_way` in each direction (a round trip of
    /// twice that).
    pub fn start(listen: SocketAddr, target: SocketAddr, one_way: Duration) -> Result<WanLink> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("binding the WAN link {listen}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        listener
            .set_nonblocking(true)
            .context("setting the listener non-blocking")?;
        let shared = Arc::new(Shared {
            target,
            delay_us: AtomicU64::new(one_way.as_micros() as u64),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            open: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wan-accept".into())
            .spawn(move || accept_loop(listener, s))
            .context("starting the WAN link")?;
        Ok(WanLink {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the one-way delay of bytes read from now on.
    pub fn set_one_way(&self, one_way: Duration) {
        self.shared
            .delay_us
            .store(one_way.as_micros() as u64, Ordering::Relaxed);
    }

    /// The round-trip time the link adds.
    pub fn rtt(&self) -> Duration {
        Duration::from_micros(self.shared.delay_us.load(Ordering::Relaxed) * 2)
    }

    /// Closes every open connection at once (both ends see a reset or an end of stream).
    pub fn cut(&self) -> usize {
        let open = std::mem::take(&mut *lock(&self.shared.open));
        for (_, a, b) in &open {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        open.len()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.open).len()
    }

    pub fn stats(&self) -> WanStats {
        let c = &self.shared.counters;
        WanStats {
            connections: c.connections.load(Ordering::Relaxed),
            full_handshakes: c.full.load(Ordering::Relaxed),
            resumptions: c.resumed.load(Ordering::Relaxed),
            bytes_up: c.up.load(Ordering::Relaxed),
            bytes_down: c.down.load(Ordering::Relaxed),
        }
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.cut();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        if lock(&shared.open).len() >= MAX_CONNECTIONS {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match listener.accept() {
            Ok((client, _)) => {
                next_id += 1;
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                let (s, id) = (shared.clone(), next_id);
                let _ = std::thread::Builder::new()
                    .name("wan-conn".into())
                    .spawn(move || {
                        let _ = connection(id, client, &s);
                        lock(&s.open).retain(|(i, _, _)| *i != id);
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One proxied connection: four threads (a reader and a delayed writer each way).
fn connection(id: u64, client: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT)?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
    }
    lock(&shared.open).push((id, client.try_clone()?, server.try_clone()?));
    let mut threads = Vec::new();
    for up in [true, false] {
        let (from, to) = if up {
            (client.try_clone()?, server.try_clone()?)
        } else {
            (server.try_clone()?, client.try_clone()?)
        };
        let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
        let s = shared.clone();
        threads.push(std::thread::spawn(move || read_side(from, tx, &s, up)));
        let s = shared.clone();
        threads.push(std::thread::spawn(move || write_side(to, rx, &s, up)));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Reads chunks and stamps each with when it may leave the link.
fn read_side(mut from: TcpStream, tx: SyncSender<(Instant, Vec<u8>)>, s: &Shared, up: bool) {
    let mut hello = up.then(Vec::new);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(h) = &mut hello
                    && let Some(resumed) = sniff_hello(h, &buf[..n])
                {
                    let c = if resumed {
                        &s.counters.resumed
                    } else {
                        &s.counters.full
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    hello = None;
                }
                let due =
                    Instant::now() + Duration::from_micros(s.delay_us.load(Ordering::Relaxed));
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Read);
}

/// Writes each chunk when it is due; passes the end of stream on after the last.
fn write_side(mut to: TcpStream, rx: Receiver<(Instant, Vec<u8>)>, s: &Shared, up: bool) {
    let counter = if up { &s.counters.up } else { &s.counters.down };
    while let Ok((due, bytes)) = rx.recv() {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if to.write_all(&bytes).is_err() {
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
        counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Feeds the first bytes of a client's stream; once its first TLS record (a ClientHello) is
/// whole, says whether it offers to resume (`Some(true)`), or not (`Some(false)`). `None`:
/// more bytes are needed. A stream that is not TLS counts as a full handshake.
fn sniff_hello(acc: &mut Vec<u8>, bytes: &[u8]) -> Option<bool> {
    acc.extend_from_slice(bytes);
    if acc.len() < 5 {
        return None;
    }
    if acc[0] != 22 {
        return Some(false);
    }
    let len = usize::from(u16::from_be_bytes([acc[3], acc[4]]));
    if acc.len() < 5 + len {
        return if acc.len() > 64 * 1024 {
            Some(false)
        } else {
            None
        };
    }
    Some(offers_psk(&acc[5..5 + len]).unwrap_or(false))
}

/// Whether a ClientHello handshake message carries the `pre_shared_key` extension (41).
fn offers_psk(msg: &[u8]) -> Option<bool> {
    let mut r = Reader(msg);
    if r.u8()? != 1 {
        return Some(false);
    }
    r.skip(3)?; // handshake length
    r.skip(2 + 32)?; // legacy version, random
    let n = usize::from(r.u8()?);
    r.skip(n)?; // session id
    let n = usize::from(r.u16()?);
    r.skip(n)?; // cipher suites
    let n = usize::from(r.u8()?);
    r.skip(n)?; // compression methods
    let n = usize::from(r.u16()?);
    let mut ext = Reader(r.take(n)?);
    while !ext.0.is_empty() {
        let (kind, n) = (ext.u16()?, usize::from(ext.u16()?));
        ext.skip(n)?;
        if kind == 41 {
            return Some(true);
        }
    }
    Some(false)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn a_round_trip_takes_twice_the_one_way_delay() {
        let target = echo_server();
        let link = WanLink::start(
            "127.0.0.1:0".parse().unwrap(),
            target,
            Duration::from_millis(40),
        )
        .unwrap();
        let mut c = TcpStream::connect(link.addr()).unwrap();
        c.set_nodelay(true).unwrap();
        let mut back = [0u8; 4];
        for _ in 0..3 {
            let t = Instant::now();
            c.write_all(b"ping").unwrap();
            c.read_exact(&mut back).unwrap();
            let rtt = t.elapsed();
            assert_eq!(&back, b"ping");
            assert!(
                (Duration::from_millis(80)..Duration::from_millis(300)).contains(&rtt),
                "{rtt:?}"
            );
        }
        link.set_one_way(Duration::ZERO);
        let t = Instant::now();
        c.write_all(b"pong").unwrap();
        c.read_exact(&mut back).unwrap();
        assert!(t.elapsed() < Duration::from_millis(60), "{:?}", t.elapsed());
        assert_eq!(link.stats().connections, 1);
        assert_eq!(link.stats().full_handshakes, 1, "not TLS: counted as full");
        assert_eq!(link.cut(), 1);
        assert!(matches!(c.read(&mut back), Ok(0) | Err(_)));
    }

    /// A ClientHello with the given extensions (type, body).
    fn hello(exts: &[(u16, &[u8])]) -> Vec<u8> {
        let mut e = Vec::new();
        for (t, b) in exts {
            e.extend_from_slice(&t.to_be_bytes());
            e.extend_from_slice(&(b.len() as u16).to_be_bytes());
            e.extend_from_slice(b);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(&e);
        let mut msg = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        msg.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1, (msg.len() >> 8) as u8, msg.len() as u8];
        rec.extend_from_slice(&msg);
        rec
    }

    #[test]
    fn client_hellos_are_told_apart_by_their_resumption_offer() {
        let full = hello(&[(0, b"name"), (43, &[2, 3, 4])]);
        let resumed = hello(&[(43, &[2, 3, 4]), (41, &[0; 8])]);
        assert_eq!(sniff_hello(&mut Vec::new(), &full), Some(false));
        assert_eq!(sniff_hello(&mut Vec::new(), &resumed), Some(true));
        // In pieces.
        let mut acc = Vec::new();
        assert_eq!(sniff_hello(&mut acc, &resumed[..20]), None);
        assert_eq!(sniff_hello(&mut acc, &resumed[20..]), Some(true));
        // Truncated inside: not a resumption.
        let mut bad = resumed.clone();
        bad[4] -= 6;
        bad.truncate(bad.len() - 6);
        assert_eq!(sniff_hello(&mut Vec::new(), &bad), Some(false));
    }
}
