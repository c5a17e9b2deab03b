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

/// mDNS floods: services of the nodes' type (`_rjs-compute._tcp.local.`) that nobody can
/// verify, written with an independent DNS encoder (simple-dns, not mdns-sd) and sent to
/// `224.0.0.251:5353` from port 5353, as any host on the LAN could.
pub mod mdns {
    use std::io;
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

    use simple_dns::rdata::{A, PTR, RData, SRV, TXT};
    use simple_dns::{CLASS, Name, Packet, PacketFlag, ResourceRecord};
    use socket2::{Domain, Protocol, Socket, Type};

    const SERVICE: &str = "_rjs-compute._tcp.local";
    /// Services per packet (each about 150 bytes: packets stay under 1,400 bytes).
    const PER_PACKET: usize = 8;

    fn record<'a>(name: &'a str, ttl: u32, rdata: RData<'a>) -> io::Result<ResourceRecord<'a>> {
        let name = Name::new(name).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(ResourceRecord::new(name, CLASS::IN, ttl, rdata))
    }

    /// A sender of forged services on the interface of `ip` (e.g. `127.0.0.1` on `lo`).
    pub struct Flooder {
        socket: UdpSocket,
        /// The TTL the forged records ask to be cached for, seconds.
        pub ttl: u32,
        sent: usize,
    }

    impl Flooder {
        pub fn new(ip: Ipv4Addr, ttl: u32) -> io::Result<Flooder> {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5353)).into())?;
            s.set_multicast_if_v4(&ip)?;
            s.set_multicast_loop_v4(true)?;
            Ok(Flooder {
                socket: s.into(),
                ttl,
                sent: 0,
            })
        }

        /// Services sent so far.
        pub fn sent(&self) -> usize {
            self.sent
        }

        /// Sends `count` new services (`flood-<n>`, each with PTR, SRV, an unsigned TXT and
        /// an A record).
        pub fn send(&mut self, count: usize) -> io::Result<()> {
            let mut left = count;
            while left > 0 {
                let n = left.min(PER_PACKET);
                let bytes = self.packet(self.sent, n)?;
                self.socket
                    .send_to(&bytes, (Ipv4Addr::new(224, 0, 0, 251), 5353))?;
                self.sent += n;
                left -= n;
            }
            Ok(())
        }

        fn packet(&self, first: usize, n: usize) -> io::Result<Vec<u8>> {
            let names: Vec<(String, String, String)> = (first..first + n)
                .map(|i| {
                    (
                        format!("flood-{i}.{SERVICE}"),
                        format!("flood-{i}.local"),
                        format!("id=flood-{i}"),
                    )
                })
                .collect();
            let bad = |e: simple_dns::SimpleDnsError| io::Error::other(e.to_string());
            let mut p = Packet::new_reply(0);
            p.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
            for (instance, host, txt) in &names {
                let ttl = self.ttl;
                let mut t = TXT::new();
                t.add_string(txt).map_err(bad)?;
                let ptr = RData::PTR(PTR(Name::new(instance).map_err(bad)?));
                p.answers.push(record(SERVICE, ttl, ptr)?);
                let srv = RData::SRV(SRV {
                    priority: 0,
                    weight: 0,
                    port: 7000,
                    target: Name::new(host).map_err(bad)?,
                });
                p.answers.push(record(instance, ttl, srv)?);
                p.answers.push(record(instance, ttl, RData::TXT(t))?);
                let a = RData::A(A::from(Ipv4Addr::new(127, 0, 0, 3)));
                p.answers.push(record(host, ttl, a)?);
            }
            p.build_bytes_vec_compressed().map_err(bad)
        }
    }
}
