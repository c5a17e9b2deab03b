//! Bounded floods of idle connections, for the pre-authentication tests: sockets that connect
//! and then never send a byte, as an attacker on the LAN would hold them.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// Time one connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle connections to one server; closed when dropped.
#[derive(Debug)]
pub struct IdleSockets {
    sockets: Vec<Socket>,
    /// Connects that failed or timed out.
    pub failed: usize,
}

/// Opens `n` TCP connections from local address `from` (e.g. `127.0.0.2`, another source
/// than the legitimate clients' `127.0.0.1`) to `to`, sending nothing.
pub fn idle_sockets(from: IpAddr, to: SocketAddr, n: usize) -> io::Result<IdleSockets> {
    let mut sockets = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let s = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
        s.bind(&SocketAddr::new(from, 0).into())?;
        match s.connect_timeout(&to.into(), CONNECT_TIMEOUT) {
            Ok(()) => sockets.push(s),
            Err(_) => failed += 1,
        }
    }
    Ok(IdleSockets { sockets, failed })
}

impl IdleSockets {
    /// Connections made.
    pub fn connected(&self) -> usize {
        self.sockets.len()
    }

    /// How many the server still holds open (it has neither closed nor reset them).
    pub fn still_open(&self) -> usize {
        self.sockets.iter().filter(|s| is_open(s)).count()
    }
}

fn is_open(s: &Socket) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    let open = match s.peek(&mut buf) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    };
    let _ = s.set_nonblocking(false);
    open
}
