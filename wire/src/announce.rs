//! Signed announcements of compute nodes, carried as the mDNS TXT fields of
//! `_rjs-compute._tcp.local.` (see `docs/discovery.md`).
//!
//! Every field is covered by one ed25519 signature by the node's key over a
//! domain-separated canonical statement ([`Announcement::canonical`]):
//!
//! ```text
//! RJS-ANNOUNCE-V2
//! id=<node id>
//! port=<port>
//! addrs=<ip1,ip2,…>
//! mflops=<MFLOPS>
//! free=<free slots>
//! total=<total slots>
//! groups=<g1,g2,…>
//! ts=<unix ms>
//! seq=<sequence>
//! ```
//!
//! The addresses the lookup dials are the signed `addrs`, never those of mDNS address records
//! (which anybody on the LAN can send). V1 announcements (no `addrs`) are refused.
//!
//! This crate does not depend on the key types of `rjs-signer` (which optionally depends on
//! this crate); signing and verification are passed in as closures, e.g.
//! `ann.to_txt(|m| key.sign(m))` and `ann.verify(&sig, |m, s| public.verify(m, s))`.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// The mDNS service type nodes announce.
pub const SERVICE_TYPE: &str = "_rjs-compute._tcp.local.";

/// The thread behind an mDNS announcer or browser: it runs until it is stopped, by
/// [`StoppableThread::stop`] or by dropping the handle. Its body gets a receiver that yields
/// `Disconnected` (or `Timeout` while it should go on), to poll or to wait on between rounds.
pub struct StoppableThread {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StoppableThread {
    /// Spawns `body` on a thread called `name`.
    pub fn spawn(
        name: &str,
        body: impl FnOnce(std::sync::mpsc::Receiver<()>) + Send + 'static,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(rx))
            .unwrap_or_else(|e| panic!("spawning thread {name}: {e}"));
        StoppableThread {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Tells the thread to stop and waits for it.
    pub fn stop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StoppableThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The mDNS host name a node announces: `rjs-` and the first 16 hex digits of its key's
/// fingerprint (as `rjs_signer::keys::PublicKey::fingerprint` displays it), in `.local.`: a
/// name no PC has.
pub fn host_name(fingerprint: &str) -> String {
    let hex: String = fingerprint
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    format!("rjs-{hex}.local.")
}

/// Now, in Unix milliseconds: the clock of an announcement's `timestamp_ms` (0 if the clock
/// is before 1970).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Domain separation tag, the first line of the signed statement.
pub const DOMAIN: &str = "RJS-ANNOUNCE-V2";
/// Maximum bytes of one TXT `key=value` string (DNS character-string limit).
pub const MAX_TXT_ENTRY: usize = 255;
/// Maximum number of groups in one announcement.
pub const MAX_GROUPS: usize = 16;
/// Maximum length of a node id or a group name.
pub const MAX_NAME: usize = 64;
/// Length of the base64 signature field.
pub const SIG_B64_LEN: usize = 88;

/// Most addresses one announcement carries.
pub const MAX_ADDRS: usize = 8;

/// TXT keys, in canonical order (the signature `sig` comes last).
pub const FIELDS: [&str; 9] = [
    "id", "port", "addrs", "mflops", "free", "total", "groups", "ts", "seq",
];

/// One announcement of a compute node (everything but the signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Node id, `[A-Za-z0-9._-]{1,64}`.
    pub node_id: String,
    /// TCP port of the node's job server.
    pub port: u16,
    /// Where the job server listens, the node's preferred address first: 1 to [`MAX_ADDRS`]
    /// unicast addresses, no address twice.
    pub addrs: Vec<IpAddr>,
    /// Speed from the start-up benchmark, in MFLOPS (rounded).
    pub mflops: u64,
    /// Free slots now.
    pub free_slots: u32,
    /// Total slots.
    pub total_slots: u32,
    /// Groups the node serves (each `[A-Za-z0-9._-]{1,64}`, at most [`MAX_GROUPS`]).
    pub groups: Vec<String>,
    /// Unix time of the announcement, milliseconds.
    pub timestamp_ms: u64,
    /// Sequence number, increasing per announcement of one node process.
    pub seq: u64,
}

/// Why TXT fields were refused as an announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    #[error("the announcement carries no signature")]
    Unsigned,
    #[error("missing TXT field {0:?}")]
    MissingField(&'static str),
    #[error("TXT field {0:?} appears more than once")]
    DuplicateField(String),
    #[error("unexpected TXT field {0:?}")]
    UnknownField(String),
    #[error("TXT field {key:?}: {reason}")]
    BadField { key: &'static str, reason: String },
    #[error("TXT entry {key:?} is {len} bytes (at most {MAX_TXT_ENTRY})")]
    TooLong { key: String, len: usize },
    #[error("the signature is not {SIG_B64_LEN} characters of base64 encoding 64 bytes")]
    BadSignatureEncoding,
    #[error("the signature does not verify")]
    BadSignature,
}

/// Whether `s` is a valid node id or group name (`[A-Za-z0-9._-]{1,64}`).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Whether `g` is a node group as manifests write them: `/seg[/seg…]`, each segment of
/// `[a-z0-9_-]`, at most 64 bytes in all.
pub fn valid_group(g: &str) -> bool {
    g.len() <= MAX_NAME
        && g.strip_prefix('/').is_some_and(|rest| {
            rest.split('/').all(|seg| {
                !seg.is_empty()
                    && seg.bytes().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-')
                    })
            })
        })
}

fn bad(key: &'static str, reason: impl Into<String>) -> AnnounceError {
    AnnounceError::BadField {
        key,
        reason: reason.into(),
    }
}

impl Announcement {
    /// Checks the fields' syntax and bounds (names, groups, slots, TXT lengths).
    pub fn validate(&self) -> Result<(), AnnounceError> {
        if !valid_name(&self.node_id) {
            return Err(bad("id", "use 1-64 characters of A-Z a-z 0-9 . _ -"));
        }
        if self.groups.len() > MAX_GROUPS {
            return Err(bad("groups", format!("more than {MAX_GROUPS} groups")));
        }
        for g in &self.groups {
            if !valid_group(g) {
                return Err(bad("groups", format!("bad group name {g:?}")));
            }
        }
        if self.addrs.is_empty() || self.addrs.len() > MAX_ADDRS {
            return Err(bad("addrs", format!("1 to {MAX_ADDRS} addresses")));
        }
        for (i, a) in self.addrs.iter().enumerate() {
            if a.is_unspecified() || a.is_multicast() || is_broadcast(a) {
                return Err(bad("addrs", format!("{a} is not a unicast address")));
            }
            if self.addrs[..i].contains(a) {
                return Err(bad("addrs", format!("{a} is listed twice")));
            }
        }
        if self.free_slots > self.total_slots {
            return Err(bad("free", "more free slots than total slots"));
        }
        for (k, v) in self.fields() {
            let len = k.len() + 1 + v.len();
            if len > MAX_TXT_ENTRY {
                return Err(AnnounceError::TooLong {
                    key: k.to_owned(),
                    len,
                });
            }
        }
        Ok(())
    }

    /// The unsigned fields as (key, value), in canonical order.
    pub fn fields(&self) -> [(&'static str, String); 9] {
        let addrs: Vec<String> = self.addrs.iter().map(IpAddr::to_string).collect();
        [
            ("id", self.node_id.clone()),
            ("port", self.port.to_string()),
            ("addrs", addrs.join(",")),
            ("mflops", self.mflops.to_string()),
            ("free", self.free_slots.to_string()),
            ("total", self.total_slots.to_string()),
            ("groups", self.groups.join(",")),
            ("ts", self.timestamp_ms.to_string()),
            ("seq", self.seq.to_string()),
        ]
    }

    /// The signed statement: `RJS-ANNOUNCE-V2\n` then `key=value\n` per field.
    pub fn canonical(&self) -> Vec<u8> {
        let mut s = String::with_capacity(256);
        s.push_str(DOMAIN);
        s.push('\n');
        for (k, v) in self.fields() {
            s.push_str(k);
            s.push('=');
            s.push_str(&v);
            s.push('\n');
        }
        s.into_bytes()
    }

    /// Validates and signs; returns the TXT fields including `sig` (base64, 88 chars).
    pub fn to_txt(
        &self,
        sign: impl FnOnce(&[u8]) -> [u8; 64],
    ) -> Result<Vec<(String, String)>, AnnounceError> {
        self.validate()?;
        let sig = sign(&self.canonical());
        let mut out: Vec<(String, String)> = self
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        out.push(("sig".to_owned(), B64.encode(sig)));
        Ok(out)
    }

    /// Parses TXT fields into the announcement and its signature; does NOT verify it (the
    /// key depends on the node id: call [`Announcement::verify`]). Refuses missing, duplicate,
    /// unknown, over-long or non-canonical fields and a missing signature.
    pub fn from_txt<K: AsRef<str>, V: AsRef<str>>(
        props: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(Announcement, [u8; 64]), AnnounceError> {
        let mut vals: [Option<String>; 10] = Default::default();
        for (k, v) in props {
            let (k, v) = (k.as_ref(), v.as_ref());
            let len = k.len() + 1 + v.len();
            if len > MAX_TXT_ENTRY {
                return Err(AnnounceError::TooLong {
                    key: k.to_owned(),
                    len,
                });
            }
            let idx = match FIELDS.iter().position(|f| *f == k) {
                Some(i) => i,
                None if k == "sig" => 9,
                None => return Err(AnnounceError::UnknownField(k.to_owned())),
            };
            if vals[idx].replace(v.to_owned()).is_some() {
                return Err(AnnounceError::DuplicateField(k.to_owned()));
            }
        }
        let sig_text = vals[9].take().ok_or(AnnounceError::Unsigned)?;
        let mut take = |i: usize| vals[i].take().ok_or(AnnounceError::MissingField(FIELDS[i]));
        let id = take(0)?;
        let port = take(1)?;
        let addrs = take(2)?;
        let mflops = take(3)?;
        let free = take(4)?;
        let total = take(5)?;
        let groups = take(6)?;
        let ts = take(7)?;
        let seq = take(8)?;
        let ann = Announcement {
            node_id: id,
            port: num("port", &port)?,
            addrs: addresses(&addrs)?,
            mflops: num("mflops", &mflops)?,
            free_slots: num("free", &free)?,
            total_slots: num("total", &total)?,
            groups: if groups.is_empty() {
                Vec::new()
            } else {
                groups.split(',').map(str::to_owned).collect()
            },
            timestamp_ms: num("ts", &ts)?,
            seq: num("seq", &seq)?,
        };
        ann.validate()?;
        if sig_text.len() != SIG_B64_LEN {
            return Err(AnnounceError::BadSignatureEncoding);
        }
        let sig: [u8; 64] = B64
            .decode(sig_text.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(AnnounceError::BadSignatureEncoding)?;
        Ok((ann, sig))
    }

    /// Checks `sig` over [`Announcement::canonical`] with `verify(message, signature)`
    /// (e.g. `|m, s| public_key.verify(m, s)`).
    pub fn verify(
        &self,
        sig: &[u8; 64],
        verify: impl FnOnce(&[u8], &[u8]) -> bool,
    ) -> Result<(), AnnounceError> {
        if verify(&self.canonical(), sig) {
            Ok(())
        } else {
            Err(AnnounceError::BadSignature)
        }
    }
}

/// The broadcast address 255.255.255.255.
fn is_broadcast(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V4(v4) if v4.is_broadcast())
}

/// Comma-separated addresses, each in its canonical text form (as `IpAddr` displays it), so
/// that the statement is canonical.
fn addresses(s: &str) -> Result<Vec<IpAddr>, AnnounceError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|a| match a.parse::<IpAddr>() {
            Ok(ip) if ip.to_string() == a => Ok(ip),
            _ => Err(bad(
                "addrs",
                format!("{a:?} is not an IP address in canonical form"),
            )),
        })
        .collect()
}

/// Strict decimal: digits only, no sign, no leading zero (so the statement is canonical).
fn num<T: std::str::FromStr>(key: &'static str, s: &str) -> Result<T, AnnounceError> {
    let canonical =
        !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(bad(key, format!("{s:?} is not a canonical decimal number")));
    }
    s.parse()
        .map_err(|_| bad(key, format!("{s:?} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A toy "signature" for tests without a key crate: sha256-free, just deterministic.
    fn toy_sign(m: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        for (i, b) in m.iter().enumerate() {
            out[i % 64] = out[i % 64].wrapping_mul(31).wrapping_add(*b);
        }
        out
    }
    fn toy_verify(m: &[u8], s: &[u8]) -> bool {
        toy_sign(m)[..] == *s
    }

    fn sample() -> Announcement {
        Announcement {
            node_id: "node-1".into(),
            port: 7000,
            addrs: vec!["192.168.1.20".parse().unwrap(), "fd00::20".parse().unwrap()],
            mflops: 1234,
            free_slots: 1,
            total_slots: 2,
            groups: vec!["/compute".into(), "/compute/gpu".into()],
            timestamp_ms: 1_700_000_000_000,
            seq: 7,
        }
    }

    #[test]
    fn round_trip() {
        let txt = sample().to_txt(toy_sign).unwrap();
        assert_eq!(txt.last().unwrap().0, "sig");
        assert_eq!(txt.last().unwrap().1.len(), SIG_B64_LEN);
        let (ann, sig) = Announcement::from_txt(txt.clone()).unwrap();
        assert_eq!(ann, sample());
        ann.verify(&sig, toy_verify).unwrap();
        let empty = Announcement {
            groups: vec![],
            ..sample()
        };
        let (ann, _) = Announcement::from_txt(empty.to_txt(toy_sign).unwrap()).unwrap();
        assert!(ann.groups.is_empty());
    }

    #[test]
    fn errors() {
        let txt = sample().to_txt(toy_sign).unwrap();
        let without = |k: &str| {
            txt.iter()
                .filter(|(kk, _)| kk != k)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            Announcement::from_txt(without("sig")),
            Err(AnnounceError::Unsigned)
        );
        assert_eq!(
            Announcement::from_txt(without("port")),
            Err(AnnounceError::MissingField("port"))
        );
        let mut dup = txt.clone();
        dup.push(("seq".into(), "8".into()));
        assert!(matches!(
            Announcement::from_txt(dup),
            Err(AnnounceError::DuplicateField(_))
        ));
        let mut extra = txt.clone();
        extra.push(("x".into(), "1".into()));
        assert!(matches!(
            Announcement::from_txt(extra),
            Err(AnnounceError::UnknownField(_))
        ));
        let mut long = txt.clone();
        long[0].1 = "a".repeat(300);
        assert!(matches!(
            Announcement::from_txt(long),
            Err(AnnounceError::TooLong { .. })
        ));
        let mut badsig = txt.clone();
        badsig[9].1 = "!".repeat(88);
        assert_eq!(
            Announcement::from_txt(badsig),
            Err(AnnounceError::BadSignatureEncoding)
        );
        let mut lead = txt.clone();
        lead[1].1 = "07000".into();
        assert!(matches!(
            Announcement::from_txt(lead),
            Err(AnnounceError::BadField { key: "port", .. })
        ));
        // Addresses: canonical text, unicast, none twice, at least one.
        for bad_addrs in [
            "",
            "192.168.001.20",
            "FD00::20",
            "0.0.0.0",
            "224.0.0.251",
            "255.255.255.255",
            "10.0.0.1,10.0.0.1",
            "10.0.0.1,,10.0.0.2",
            "node-1.local",
        ] {
            let mut t = txt.clone();
            t[2].1 = bad_addrs.into();
            assert!(
                matches!(
                    Announcement::from_txt(t),
                    Err(AnnounceError::BadField { key: "addrs", .. })
                ),
                "{bad_addrs:?}"
            );
        }
        // A V1 announcement (no addrs) is refused.
        assert_eq!(
            Announcement::from_txt(without("addrs")),
            Err(AnnounceError::MissingField("addrs"))
        );
    }

    #[test]
    fn limits_on_signing() {
        let too_many = Announcement {
            groups: (0..17).map(|i| format!("/g{i}")).collect(),
            ..sample()
        };
        assert!(too_many.to_txt(toy_sign).is_err());
        // 16 groups of 64 chars exceed 255 bytes in one TXT entry.
        let too_long = Announcement {
            groups: (0..16).map(|i| format!("/{i:0>63}")).collect(),
            ..sample()
        };
        assert!(matches!(
            too_long.to_txt(toy_sign),
            Err(AnnounceError::TooLong { .. })
        ));
        let bad_id = Announcement {
            node_id: "a b".into(),
            ..sample()
        };
        assert!(bad_id.to_txt(toy_sign).is_err());
        let over = Announcement {
            free_slots: 3,
            ..sample()
        };
        assert!(over.to_txt(toy_sign).is_err());
        let nine = Announcement {
            addrs: (1..=9)
                .map(|i| format!("10.0.0.{i}").parse().unwrap())
                .collect(),
            ..sample()
        };
        assert!(nine.to_txt(toy_sign).is_err());
    }

    #[test]
    fn tampering_any_field_breaks_the_signature() {
        let txt = sample().to_txt(toy_sign).unwrap();
        let tampered = [
            ("id", "node-2"),
            ("port", "7001"),
            ("addrs", "192.168.1.66"),
            ("mflops", "99999"),
            ("free", "2"),
            ("total", "3"),
            ("groups", "/compute"),
            ("ts", "1700000000001"),
            ("seq", "8"),
        ];
        for (k, v) in tampered {
            let t: Vec<_> = txt
                .iter()
                .map(|(kk, vv)| {
                    if kk == k {
                        (kk.clone(), v.to_owned())
                    } else {
                        (kk.clone(), vv.clone())
                    }
                })
                .collect();
            let (ann, sig) = Announcement::from_txt(t).unwrap();
            assert_eq!(
                ann.verify(&sig, toy_verify),
                Err(AnnounceError::BadSignature),
                "field {k}"
            );
        }
    }
}
