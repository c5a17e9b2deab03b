//! Connections held before authentication (issue 10, item 5), through the real web server:
//! a thousand idle sockets from one host neither lock out other clients nor stay open past
//! the handshake timeout. (The compute node's and the lookup enrolment's are in
//! `tests/compute.rs` and `lookup/tests/enrol.rs`.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rjs_e2e::*;
use rjs_harness::flood::idle_sockets;
use rjs_harness::wait::poll_until;
use rjs_webserver::server::{PRE_AUTH_LIMITS, TLS_HANDSHAKE_TIMEOUT};

/// The attacker's source address: another host than the clients' 127.0.0.1.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[test]
fn a_thousand_idle_sockets_from_one_host_leave_other_clients_served() {
    let mut ws = WebServer::init().unwrap();
    let key = ws.add_author("alice").unwrap();
    ws.start().unwrap();
    let addr: SocketAddr = ws.addr.parse().unwrap();

    let flood = idle_sockets(ATTACKER, addr, 1000).unwrap();
    assert_eq!(flood.connected(), 1000, "the kernel took every connection");
    // A new client, with its own TLS handshake, is served at once.
    let alice = ws.author(key).unwrap();
    let t = Instant::now();
    assert_eq!(alice.whoami().unwrap().name, "alice");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "whoami took {took:?}");
    // The server keeps at most its per-source bound of them, and only until the handshake
    // timeout.
    let held = flood.still_open();
    assert!(
        held <= PRE_AUTH_LIMITS.per_source,
        "{held} idle sockets held"
    );
    poll_until(
        TLS_HANDSHAKE_TIMEOUT + Duration::from_secs(5),
        Duration::from_millis(200),
        || flood.still_open(),
        |&n| n == 0,
        |n| format!("{n} idle sockets still open after the handshake timeout"),
    );
    // And the server still answers.
    assert_eq!(alice.whoami().unwrap().name, "alice");
}
