//! Announcing the node on the LAN: the node's service `_rjs-compute._tcp.local.` is
//! (re-)registered with mdns-sd on a fixed interval with the current free slots, each time as a
//! freshly signed [`Announcement`] (new timestamp, next sequence number). Each announcement is
//! a lease renewal at the lookup server (`docs/discovery.md`).
//!
//! WARNING: `mdns_sd::ServiceDaemon::new()` joins the mDNS multicast groups on every interface
//! as soon as it is created, before the interface restriction applies. Tests and demos must
//! create an [`Announcer`] only inside a private network namespace.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};
use rjs_signer::keys::KeyPair;
use rjs_wire::announce::{AnnounceError, Announcement, SERVICE_TYPE, StoppableThread};
use rjs_wire::ids::NodeId;

/// Default re-announcement interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// What to announce and how.
#[derive(Debug, Clone)]
pub struct AnnouncerConfig {
    /// Node id (also the mDNS instance name).
    pub node_id: NodeId,
    /// Job server port.
    pub port: u16,
    pub mflops: u64,
    pub total_slots: u32,
    pub groups: Vec<String>,
    /// Re-announcement interval (default 2 s).
    pub interval: Duration,
    /// Interfaces mDNS may use; `None` keeps the daemon's default (all).
    pub interfaces: Option<Vec<IfKind>>,
    /// Addresses to announce (signed); empty: those of the enabled interfaces, found anew for
    /// each announcement ([`auto_addresses`]).
    pub addresses: Vec<IpAddr>,
    /// Leave IPv6 addresses out of the automatic ones (the job server listens on IPv4 only).
    pub ipv4_only: bool,
}

impl AnnouncerConfig {
    pub fn new(node_id: impl Into<NodeId>, port: u16, mflops: u64, total_slots: u32) -> Self {
        AnnouncerConfig {
            node_id: node_id.into(),
            port,
            mflops,
            total_slots,
            groups: vec!["/compute".to_owned()],
            interval: DEFAULT_INTERVAL,
            interfaces: None,
            addresses: Vec::new(),
            ipv4_only: false,
        }
    }
}

/// Why the announcer could not start.
#[derive(Debug, thiserror::Error)]
pub enum AnnouncerError {
    #[error("mDNS")]
    Mdns(#[from] mdns_sd::Error),
    #[error("announcement")]
    Announce(#[from] AnnounceError),
}

/// One IP address of a local network interface that mdns-sd would use (up, running, not
/// point-to-point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddr {
    pub interface: String,
    pub ip: IpAddr,
    pub netmask: IpAddr,
}

impl LocalAddr {
    /// Whether `ip` is on this address's subnet: mdns-sd sends an address record on an
    /// interface only for the service addresses in that interface's subnet.
    pub fn same_subnet(&self, ip: &IpAddr) -> bool {
        match (self.ip, self.netmask, ip) {
            (IpAddr::V4(a), IpAddr::V4(m), IpAddr::V4(b)) => {
                let m = u32::from(m);
                u32::from(a) & m == u32::from(*b) & m
            }
            (IpAddr::V6(a), IpAddr::V6(m), IpAddr::V6(b)) => {
                let m = u128::from(m);
                u128::from(a) & m == u128::from(*b) & m
            }
            _ => false,
        }
    }
}

/// The addresses of this network namespace's interfaces that are up and running and not
/// point-to-point (the interfaces mdns-sd uses).
pub fn local_addrs() -> std::io::Result<Vec<LocalAddr>> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    fn ip_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
        if sa.is_null() {
            return None;
        }
        // SAFETY: getifaddrs gives valid sockaddrs of the size their family implies.
        unsafe {
            match i32::from((*sa).sa_family) {
                libc::AF_INET => {
                    let sin = &*(sa as *const libc::sockaddr_in);
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(sa as *const libc::sockaddr_in6);
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            }
        }
    }
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let flags = ifa.ifa_flags;
        let wanted = libc::IFF_UP as u32 | libc::IFF_RUNNING as u32;
        if flags & wanted != wanted || flags & libc::IFF_POINTOPOINT as u32 != 0 {
            continue;
        }
        let (Some(ip), Some(netmask)) = (ip_of(ifa.ifa_addr), ip_of(ifa.ifa_netmask)) else {
            continue;
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        out.push(LocalAddr {
            interface: name.to_string_lossy().into_owned(),
            ip,
            netmask,
        });
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Whether a network interface of this name exists (up or down).
pub fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// What would keep an announcement from going out, given the interfaces' addresses
/// (`local`), the interfaces mDNS is restricted to (`interfaces`, empty: all) and the
/// advertised addresses (`advertise`, empty: automatic). mdns-sd sends the service on an
/// interface only with the advertised addresses inside that interface's subnet, and not at
/// all on an interface where there is none. One message per problem; empty when all is well.
pub fn reach_problems(
    local: &[LocalAddr],
    interfaces: &[String],
    advertise: &[IpAddr],
) -> Vec<String> {
    let enabled: Vec<&LocalAddr> = local
        .iter()
        .filter(|a| interfaces.is_empty() || interfaces.contains(&a.interface))
        .collect();
    let mut problems = Vec::new();
    for name in interfaces {
        if !enabled.iter().any(|a| &a.interface == name) {
            problems.push(format!(
                "interface {name} has no address or is not up: nothing is announced on it"
            ));
        }
    }
    if enabled.is_empty() {
        if interfaces.is_empty() {
            problems.push("no network interface is up: nothing is announced".to_owned());
        }
        return problems;
    }
    for ip in advertise {
        if !enabled.iter().any(|a| a.same_subnet(ip)) {
            let on: Vec<String> = enabled
                .iter()
                .map(|a| format!("{} {}", a.interface, a.ip))
                .collect();
            problems.push(format!(
                "the advertised address {ip} is on the subnet of none of the enabled interfaces \
                 ({}): mDNS does not send it",
                on.join(", ")
            ));
        }
    }
    problems
}

/// Whether mDNS restricted to `interfaces` (None: all) uses the interface of `a`.
fn enabled(a: &LocalAddr, interfaces: Option<&[IfKind]>) -> bool {
    let Some(kinds) = interfaces else {
        return true;
    };
    kinds.iter().any(|k| match k {
        IfKind::All => true,
        IfKind::IPv4 => a.ip.is_ipv4(),
        IfKind::IPv6 => a.ip.is_ipv6(),
        IfKind::Name(n) => &a.interface == n,
        IfKind::Addr(ip) => a.ip == *ip,
        IfKind::LoopbackV4 => a.ip.is_ipv4() && a.ip.is_loopback(),
        IfKind::LoopbackV6 => a.ip.is_ipv6() && a.ip.is_loopback(),
        _ => false,
    })
}

/// The addresses a node signs when none are configured: those of the enabled interfaces
/// (`local`, restricted to `interfaces`), IPv4 first, without loopback and IPv6 link-local
/// addresses unless there is nothing else (a node alone on `lo`), at most
/// [`rjs_wire::announce::MAX_ADDRS`].
pub fn auto_addresses(local: &[LocalAddr], interfaces: Option<&[IfKind]>) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = Vec::new();
    for a in local.iter().filter(|a| enabled(a, interfaces)) {
        if !all.contains(&a.ip) {
            all.push(a.ip);
        }
    }
    let lan = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => !v4.is_loopback(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
    };
    let mut picked: Vec<IpAddr> = all.iter().copied().filter(lan).collect();
    if picked.is_empty() {
        picked = all;
    }
    picked.sort_by_key(|ip| ip.is_ipv6());
    picked.truncate(rjs_wire::announce::MAX_ADDRS);
    picked
}

/// Source of the current number of free slots.
pub type FreeSlots = Arc<dyn Fn() -> u32 + Send + Sync>;

/// A running announcer; unregisters the service and stops its daemon on drop or
/// [`Announcer::shutdown`].
pub struct Announcer {
    thread: StoppableThread,
    fullname: String,
}

/// Builds the signed mDNS service for one announcement: its address records carry the
/// signed addresses, under the node's own [`host_name`].
pub fn service_info(ann: &Announcement, key: &KeyPair) -> Result<ServiceInfo, AnnouncerError> {
    let txt = ann.to_txt(|m| key.sign(m))?;
    // Not the node id: a node enrolled as `pc-7` must not take `pc-7.local.` from the PC's
    // own responder.
    let host = rjs_wire::announce::host_name(&key.public().fingerprint().to_string());
    let mut info = ServiceInfo::new(
        SERVICE_TYPE,
        &ann.node_id,
        &host,
        &ann.addrs[..],
        ann.port,
        &txt[..],
    )?;
    info.set_requires_probe(false);
    Ok(info)
}

impl Announcer {
    /// Creates a daemon (restricted to `config.interfaces`), announces at once and then every
    /// `config.interval` with `free_slots()`.
    pub fn start(
        config: AnnouncerConfig,
        key: Arc<KeyPair>,
        free_slots: FreeSlots,
    ) -> Result<Self, AnnouncerError> {
        let daemon = ServiceDaemon::new()?;
        if let Some(ifs) = &config.interfaces {
            daemon.disable_interface(IfKind::All)?;
            daemon.enable_interface(ifs.clone())?;
        }
        let mut seq = 0u64;
        let mut make = move |free: u32| {
            seq += 1;
            let addrs = if config.addresses.is_empty() {
                let mut local = local_addrs().unwrap_or_default();
                local.retain(|a| !config.ipv4_only || a.ip.is_ipv4());
                auto_addresses(&local, config.interfaces.as_deref())
            } else {
                config.addresses.clone()
            };
            Announcement {
                node_id: config.node_id.to_string(),
                port: config.port,
                addrs,
                mflops: config.mflops,
                free_slots: free.min(config.total_slots),
                total_slots: config.total_slots,
                groups: config.groups.clone(),
                timestamp_ms: rjs_wire::announce::unix_ms_now(),
                seq,
            }
        };
        // The first announcement is checked synchronously so a bad config fails here.
        let first = service_info(&make(free_slots()), &key)?;
        let fullname = first.get_fullname().to_owned();
        daemon.register(first)?;
        let interval = config.interval;
        let name = fullname.clone();
        let thread = StoppableThread::spawn("rjs-announce", move |rx| {
            // Stops on a message or when the sender (the Announcer) is dropped.
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                match service_info(&make(free_slots()), &key) {
                    Ok(info) => {
                        if let Err(e) = daemon.register(info) {
                            tracing::warn!("re-announcing: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("announcement: {e}"),
                }
            }
            if let Ok(done) = daemon.unregister(&name) {
                let _ = done.recv_timeout(Duration::from_secs(1));
            }
            if let Ok(done) = daemon.shutdown() {
                let _ = done.recv_timeout(Duration::from_secs(1));
            }
        });
        Ok(Announcer { thread, fullname })
    }

    /// The mDNS full name of the announced instance.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Unregisters the service, stops the daemon and waits for the thread.
    pub fn shutdown(mut self) {
        self.thread.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // No daemon here (daemons only inside a private netns: see lookup/tests/discovery.rs).
    #[test]
    fn service_info_is_signed_and_fits() {
        let key = KeyPair::from_secret([7; 32]);
        let ann = Announcement {
            node_id: "n1".into(),
            port: 7000,
            addrs: vec!["192.168.1.20".parse().unwrap()],
            mflops: 1000,
            free_slots: 1,
            total_slots: 1,
            groups: vec!["/compute".into()],
            timestamp_ms: 1,
            seq: 1,
        };
        let info = service_info(&ann, &key).unwrap();
        let props: Vec<(String, String)> = info
            .get_properties()
            .iter()
            .map(|p| (p.key().to_owned(), p.val_str().to_owned()))
            .collect();
        let (back, sig) = Announcement::from_txt(props).unwrap();
        assert_eq!(back, ann);
        back.verify(&sig, |m, s| key.public().verify(m, s)).unwrap();
        assert_eq!(info.get_fullname(), "n1._rjs-compute._tcp.local.");
        // Its host name is the node's own, not the PC's (nor the node id's).
        assert!(
            info.get_hostname().starts_with("rjs-"),
            "{}",
            info.get_hostname()
        );
        assert_eq!(
            info.get_hostname().len(),
            "rjs-".len() + 16 + ".local.".len()
        );
    }

    #[test]
    fn automatic_addresses_leave_out_loopback_unless_alone() {
        let a = |interface: &str, ip: &str, mask: &str| LocalAddr {
            interface: interface.into(),
            ip: ip.parse().unwrap(),
            netmask: mask.parse().unwrap(),
        };
        let lo = a("lo", "127.0.0.1", "255.0.0.0");
        let ll = a("eth0", "fe80::1", "ffff:ffff:ffff:ffff::");
        let v6 = a("eth0", "fd00::20", "ffff:ffff:ffff:ffff::");
        let v4 = a("eth0", "192.168.1.20", "255.255.255.0");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let local = [lo.clone(), ll, v6, v4];
        assert_eq!(
            auto_addresses(&local, None),
            [ip("192.168.1.20"), ip("fd00::20")]
        );
        assert_eq!(
            auto_addresses(&local, Some(&[IfKind::Name("lo".into())])),
            [ip("127.0.0.1")]
        );
        assert_eq!(
            auto_addresses(&local, Some(&[IfKind::IPv6])),
            [ip("fd00::20")]
        );
        assert!(auto_addresses(&[lo], Some(&[IfKind::Name("eth0".into())])).is_empty());
    }

    #[test]
    fn reach() {
        let lo = LocalAddr {
            interface: "lo".into(),
            ip: "127.0.0.1".parse().unwrap(),
            netmask: "255.0.0.0".parse().unwrap(),
        };
        let eth = LocalAddr {
            interface: "eth0".into(),
            ip: "192.168.1.20".parse().unwrap(),
            netmask: "255.255.255.0".parse().unwrap(),
        };
        let local = [lo, eth];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(reach_problems(&local, &[], &[]).is_empty());
        assert!(reach_problems(&local, &["lo".into()], &[ip("127.0.0.1")]).is_empty());
        assert!(reach_problems(&local, &[], &[ip("192.168.1.77")]).is_empty());
        let p = reach_problems(&local, &["lo".into()], &[ip("192.168.1.20")]);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("192.168.1.20 is on the subnet of none"),
            "{p:?}"
        );
        let p = reach_problems(&local, &["wlan0".into(), "lo".into()], &[]);
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("interface wlan0 "), "{p:?}");
        assert!(!reach_problems(&[], &[], &[]).is_empty());
    }

    #[test]
    fn this_machine_has_interfaces() {
        // Read-only: getifaddrs and if_nametoindex, no socket.
        let addrs = local_addrs().unwrap();
        for a in addrs.iter().filter(|a| a.interface == "lo") {
            assert!(a.ip.is_loopback(), "{a:?}");
            assert!(interface_exists("lo"));
        }
        assert!(!interface_exists("no-such-if0"));
    }
}
