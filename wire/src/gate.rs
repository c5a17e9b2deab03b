//! Bounds on connections that have not authenticated yet (`docs/security.md`, "Connections
//! held before authentication").
//!
//! Every RJS server (web server, compute node, lookup enrolment) passes each accepted TCP
//! connection through one [`Gate`] before its TLS handshake: at most
//! [`GateLimits::per_source`] connections from one source and [`GateLimits::total`] in all may
//! be waiting to authenticate at once. A connection over either bound is closed at once, so
//! idle sockets from one host can neither use up the server's handshake slots or file
//! descriptors nor lock out anybody else. The [`Pass`] a connection holds is given back when
//! it is dropped: when the handshake ends, whichever way (servers also time handshakes out in
//! a few seconds).
//!
//! A source is an IPv4 address, or an IPv6 /64 (one host on a LAN can use a whole /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How many connections may wait to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// From one source.
    pub per_source: usize,
    /// From all sources together.
    pub total: usize,
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} connections from this source are already waiting to authenticate")]
    PerSource(usize),
    #[error("{0} connections are already waiting to authenticate")]
    Total(usize),
}

/// Warnings about what outsiders cause are logged at most this often (with how many there
/// were since the last line).
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Limits a kind of log line to one per [`WARN_INTERVAL`], so that a flood from outside
/// cannot flood the log: [`Throttle::hit`] for every event, log when it says so.
#[derive(Debug, Default)]
pub struct Throttle {
    state: Mutex<(u64, Option<Instant>)>,
}

impl Throttle {
    /// Counts one event. `Some(n)` if a line is due (none in the last [`WARN_INTERVAL`]): `n`
    /// events happened since the last line, this one included; the count starts again.
    pub fn hit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0 += 1;
        let now = Instant::now();
        if s.1.is_some_and(|t| now.duration_since(t) < WARN_INTERVAL) {
            return None;
        }
        s.1 = Some(now);
        Some(std::mem::take(&mut s.0))
    }
}

/// The connections waiting to authenticate, by source. Shared (`Arc`) by the accept loops.
#[derive(Debug)]
pub struct Gate {
    limits: GateLimits,
    state: Mutex<State>,
    /// For the warnings about refused connections.
    pub refusals: Throttle,
}

#[derive(Debug, Default)]
struct State {
    by_source: HashMap<Source, usize>,
    total: usize,
}

/// A source: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.into()),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// A connection's place in the [`Gate`]; given back on drop.
#[derive(Debug)]
pub struct Pass {
    gate: Arc<Gate>,
    source: Source,
}

impl Gate {
    pub fn new(limits: GateLimits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            state: Mutex::default(),
            refusals: Throttle::default(),
        })
    }

    pub fn limits(&self) -> GateLimits {
        self.limits
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a set of counters: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets a connection from `ip` wait to authenticate, or refuses it (the caller closes
    /// it, and logs when [`Gate::refusals`] says so).
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Pass, Refused> {
        let source = Source::of(ip);
        let mut s = self.state();
        let here = s.by_source.get(&source).copied().unwrap_or(0);
        let refused = if here >= self.limits.per_source {
            Some(Refused::PerSource(here))
        } else if s.total >= self.limits.total {
            Some(Refused::Total(s.total))
        } else {
            None
        };
        if let Some(r) = refused {
            return Err(r);
        }
        *s.by_source.entry(source).or_insert(0) += 1;
        s.total += 1;
        Ok(Pass {
            gate: self.clone(),
            source,
        })
    }

    /// [`Gate::enter`] for a connection from `peer`; a refusal is logged (throttled, naming
    /// `what` was refused) and gives `None`: the caller closes the connection.
    pub fn admit(self: &Arc<Self>, peer: std::net::SocketAddr, what: &str) -> Option<Pass> {
        match self.enter(peer.ip()) {
            Ok(pass) => Some(pass),
            Err(why) => {
                if let Some(n) = self.refusals.hit() {
                    tracing::warn!(%peer, refused = n, "closing {what}: {why}");
                }
                None
            }
        }
    }

    /// Connections waiting to authenticate now.
    pub fn waiting(&self) -> usize {
        self.state().total
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut s = self.gate.state();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                s.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn gate(per_source: usize, total: usize) -> Arc<Gate> {
        Gate::new(GateLimits { per_source, total })
    }

    #[test]
    fn bounds_per_source_and_in_total_and_gives_places_back() {
        let gate = gate(2, 3);
        let a1 = gate.enter(ip("10.0.0.1")).unwrap();
        let _a2 = gate.enter(ip("10.0.0.1")).unwrap();
        assert_eq!(
            gate.enter(ip("10.0.0.1")).unwrap_err(),
            Refused::PerSource(2)
        );
        // The same source written as an IPv4-mapped IPv6 address.
        assert!(gate.enter(ip("::ffff:10.0.0.1")).is_err());
        let _b = gate.enter(ip("10.0.0.2")).unwrap();
        assert_eq!(gate.enter(ip("10.0.0.3")).unwrap_err(), Refused::Total(3));
        drop(a1);
        assert_eq!(gate.waiting(), 2);
        let _a3 = gate.enter(ip("10.0.0.1")).unwrap();
        // One line for the first refusal, then none until the interval has passed.
        assert_eq!(gate.refusals.hit(), Some(1));
        assert_eq!(gate.refusals.hit(), None);
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64() {
        let gate = gate(1, 10);
        let _p = gate.enter(ip("2001:db8:1:2::1")).unwrap();
        assert!(gate.enter(ip("2001:db8:1:2:ffff::7")).is_err());
        assert!(gate.enter(ip("2001:db8:1:3::1")).is_ok());
    }
}
