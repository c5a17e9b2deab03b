//! The listener: each accepted connection passes the pre-authentication [`Gate`], then the
//! TLS handshake (at most [`TLS_HANDSHAKE_TIMEOUT`]), then HTTP/1.1 or HTTP/2 to the app.
//!
//! actix-web's `HttpServer` puts the TLS acceptor straight behind the socket: every accepted
//! connection takes one of a worker's handshake slots until its handshake ends or times out,
//! and a worker with no slot left stops accepting. So a few hundred sockets that never start
//! TLS blocked every new client. Here the same actix pieces (actix-server, actix-tls's rustls
//! acceptor, actix-http's `HttpService`) are put together with the gate in front: at most
//! [`PRE_AUTH_LIMITS`] connections wait for their handshake, per source and in all; a
//! connection over the bound is closed at once, and the workers' handshake slots are sized
//! above the gate's total so that they never run out.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_http::{HttpService, Protocol};
use actix_service::{
    IntoServiceFactory as _, Service, ServiceFactory, ServiceFactoryExt as _, fn_factory,
    map_config,
};
use actix_tls::accept::TlsError;
use actix_tls::accept::rustls_0_23::{Acceptor, AcceptorService, TlsStream};
use actix_web::dev::{AppConfig, Extensions, Server};
use actix_web::rt::net::TcpStream;
use actix_web::web;
use rjs_wire::gate::{Gate, GateLimits};

use super::{
    AppState, CLIENT_DISCONNECT_TIMEOUT, CLIENT_REQUEST_TIMEOUT, KEEP_ALIVE, SHUTDOWN_GRACE,
    TLS_HANDSHAKE_TIMEOUT, app, on_connect,
};

/// Connections waiting for their TLS handshake: at most 32 from one source and 512 in all.
pub const PRE_AUTH_LIMITS: GateLimits = GateLimits {
    per_source: 32,
    total: 512,
};

/// The TLS acceptor behind the gate: a connection holds its [`rjs_wire::gate::Pass`] until
/// its handshake ends.
struct GatedAcceptor {
    gate: Arc<Gate>,
    tls: AcceptorService,
}

type HandshakeResult = Result<TlsStream<TcpStream>, TlsError<io::Error, Infallible>>;

impl Service<TcpStream> for GatedAcceptor {
    type Response = TlsStream<TcpStream>;
    type Error = TlsError<io::Error, Infallible>;
    type Future = Pin<Box<dyn Future<Output = HandshakeResult>>>;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<TcpStream>::poll_ready(&self.tls, cx)
    }

    fn call(&self, io: TcpStream) -> Self::Future {
        let pass = match io.peer_addr() {
            Ok(peer) => match self.gate.admit(peer, "connections waiting for TLS") {
                Some(pass) => pass,
                None => {
                    let refused = io::Error::other("too many connections waiting for TLS");
                    return Box::pin(std::future::ready(Err(TlsError::Tls(refused))));
                }
            },
            Err(e) => return Box::pin(std::future::ready(Err(TlsError::Tls(e)))),
        };
        let handshake = self.tls.call(io);
        Box::pin(async move {
            let done = handshake.await;
            drop(pass);
            done
        })
    }
}

/// Connections the kernel queues for `accept` (as actix-web's default).
const BACKLOG: i32 = 1024;

/// Binds every address `addr` resolves to (`localhost:8443`: IPv6 and IPv4).
pub fn bind(addr: &str) -> io::Result<Vec<std::net::TcpListener>> {
    use std::net::ToSocketAddrs as _;
    let mut listeners = Vec::new();
    let mut last_error = None;
    for a in addr.to_socket_addrs()? {
        let bound = (|| {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(a),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.set_reuse_address(true)?;
            socket.bind(&a.into())?;
            socket.listen(BACKLOG)?;
            io::Result::Ok(std::net::TcpListener::from(socket))
        })();
        match bound {
            Ok(l) => listeners.push(l),
            Err(e) => last_error = Some(e),
        }
    }
    match (listeners.is_empty(), last_error) {
        (false, _) => Ok(listeners),
        (true, Some(e)) => Err(e),
        (true, None) => Err(io::Error::other("the address resolves to nothing")),
    }
}

/// Settings of the listener.
pub struct Listen {
    pub listeners: Vec<std::net::TcpListener>,
    pub tls: rustls::ServerConfig,
    pub workers: usize,
}

/// The server on `l.listeners`: stops (gracefully, within [`SHUTDOWN_GRACE`]) when `stop`
/// completes.
pub fn server(
    l: Listen,
    state: web::Data<AppState>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<Server> {
    let gate = Gate::new(PRE_AUTH_LIMITS);
    // A worker's handshake slots must outnumber the gate's places, or it could stop accepting.
    actix_tls::accept::max_concurrent_tls_connect(PRE_AUTH_LIMITS.total + 64);
    let mut tls = l.tls;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut acceptor = Acceptor::new(tls);
    acceptor.set_handshake_timeout(TLS_HANDSHAKE_TIMEOUT);
    let builder = actix_server::Server::build();
    let graceful = builder.graceful_shutdown_signal();
    let mut builder = builder
        .workers(l.workers)
        .shutdown_timeout(SHUTDOWN_GRACE)
        .shutdown_signal(stop);
    for listener in l.listeners {
        let addr = listener.local_addr()?;
        let (gate, acceptor, state) = (gate.clone(), acceptor.clone(), state.clone());
        let graceful = graceful.clone();
        builder = builder.listen(format!("rjs-webserver-{addr}"), listener, move || {
            let (gate, acceptor, state) = (gate.clone(), acceptor.clone(), state.clone());
            let graceful = graceful.clone();
            let gated = fn_factory(move || {
                let tls = ServiceFactory::<TcpStream>::new_service(&acceptor, ());
                let gate = gate.clone();
                async move {
                    let tls = tls.await?;
                    Ok::<_, ()>(GatedAcceptor { gate, tls })
                }
            });
            let http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let signal = graceful.clone();
                    async move { signal.notified().await }
                })
                .keep_alive(KEEP_ALIVE)
                .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
                .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                .h2_initial_window_size(1024 * 1024)
                .h2_initial_connection_window_size(4 * 1024 * 1024)
                .local_addr(addr)
                .on_connect_ext(|io: &TlsStream<TcpStream>, ext: &mut Extensions| {
                    on_connect(io as &dyn Any, ext)
                })
                .finish(map_config(
                    app(state)
                        .into_factory()
                        .map_err(|e: actix_web::Error| e.error_response()),
                    |_| AppConfig::default(),
                ));
            gated
                .map_err(TlsError::into_service_error)
                .and_then(|io: TlsStream<TcpStream>| async move {
                    let h2 = io.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                    let proto = if h2 { Protocol::Http2 } else { Protocol::Http1 };
                    // Without it, a response written in two pieces (headers, then body)
                    // waits for the client's delayed ACK: ~40 ms per request, even on
                    // loopback.
                    let _ = io.get_ref().0.set_nodelay(true);
                    let peer: Option<SocketAddr> = io.get_ref().0.peer_addr().ok();
                    Ok((io, proto, peer))
                })
                .and_then(http.map_err(TlsError::Service))
        })?;
    }
    Ok(builder.run())
}
