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
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};
use rjs_signer::keys::KeyPair;
use rjs_wire::announce::{AnnounceError, Announcement, SERVICE_TYPE};

/// Default re-announcement interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// What to announce and how.
#[derive(Debug, Clone)]
pub struct AnnouncerConfig {
    /// Node id (also the mDNS instance name).
    pub node_id: String,
    /// Job server port.
    pub port: u16,
    pub mflops: u64,
    pub total_slots: u32,
    pub groups: Vec<String>,
    /// Re-announcement interval (default 2 s).
    pub interval: Duration,
    /// Interfaces mDNS may use; `None` keeps the daemon's default (all).
    pub interfaces: Option<Vec<IfKind>>,
    /// Addresses to announce; empty: the addresses of the enabled interfaces (automatic).
    pub addresses: Vec<IpAddr>,
}

impl AnnouncerConfig {
    pub fn new(node_id: &str, port: u16, mflops: u64, total_slots: u32) -> Self {
        AnnouncerConfig {
            node_id: node_id.to_owned(),
            port,
            mflops,
            total_slots,
            groups: vec!["default".to_owned()],
            interval: DEFAULT_INTERVAL,
            interfaces: None,
            addresses: Vec::new(),
        }
    }
}

/// Why the announcer could not start.
#[derive(Debug, thiserror::Error)]
pub enum AnnouncerError {
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
    #[error("announcement: {0}")]
    Announce(#[from] AnnounceError),
}

/// Source of the current number of free slots.
pub type FreeSlots = Arc<dyn Fn() -> u32 + Send + Sync>;

/// A running announcer; unregisters the service and stops its daemon on drop or
/// [`Announcer::shutdown`].
pub struct Announcer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    fullname: String,
}

/// Builds the signed mDNS service for one announcement; with no `addresses`, the daemon
/// fills in those of the enabled interfaces.
pub fn service_info(
    ann: &Announcement,
    key: &KeyPair,
    addresses: &[IpAddr],
) -> Result<ServiceInfo, AnnouncerError> {
    let txt = ann.to_txt(|m| key.sign(m))?;
    let host = format!("{}.local.", ann.node_id);
    let mut info = ServiceInfo::new(
        SERVICE_TYPE,
        &ann.node_id,
        &host,
        addresses,
        ann.port,
        &txt[..],
    )?;
    if addresses.is_empty() {
        info = info.enable_addr_auto();
    }
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
        let addrs = config.addresses.clone();
        let mut seq = 0u64;
        let mut make = move |free: u32| {
            seq += 1;
            Announcement {
                node_id: config.node_id.clone(),
                port: config.port,
                mflops: config.mflops,
                free_slots: free.min(config.total_slots),
                total_slots: config.total_slots,
                groups: config.groups.clone(),
                timestamp_ms: rjs_wire::announce::unix_ms_now(),
                seq,
            }
        };
        // The first announcement is checked synchronously so a bad config fails here.
        let first = service_info(&make(free_slots()), &key, &addrs)?;
        let fullname = first.get_fullname().to_owned();
        daemon.register(first)?;
        let (tx, rx) = mpsc::channel::<()>();
        let interval = config.interval;
        let name = fullname.clone();
        let thread = std::thread::Builder::new()
            .name("rjs-announce".into())
            .spawn(move || {
                // Stops on a message or when the sender (the Announcer) is dropped.
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                    match service_info(&make(free_slots()), &key, &addrs) {
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
            })
            .expect("spawning the announcer thread");
        Ok(Announcer {
            stop: Some(tx),
            thread: Some(thread),
            fullname,
        })
    }

    /// The mDNS full name of the announced instance.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Unregisters the service, stops the daemon and waits for the thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop_now();
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
            mflops: 1000,
            free_slots: 1,
            total_slots: 1,
            groups: vec!["default".into()],
            timestamp_ms: 1,
            seq: 1,
        };
        let info = service_info(&ann, &key, &[]).unwrap();
        let props: Vec<(String, String)> = info
            .get_properties()
            .iter()
            .map(|p| (p.key().to_owned(), p.val_str().to_owned()))
            .collect();
        let (back, sig) = Announcement::from_txt(props).unwrap();
        assert_eq!(back, ann);
        back.verify(&sig, |m, s| key.public().verify(m, s)).unwrap();
        assert_eq!(info.get_fullname(), "n1._rjs-compute._tcp.local.");
    }
}
