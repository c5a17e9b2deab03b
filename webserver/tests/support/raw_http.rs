//! A hand-written HTTP/1.1 client connection over TLS, for what reqwest cannot do: a body
//! sent only in part, or slowly, or chunk by chunk; a handshake that is expected to fail.
//! Shared by `webserver/tests/api.rs` and `tests/tests/webserver.rs` (`#[path]`).

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

pub struct RawHttp(pub rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl RawHttp {
    /// Connects to `addr` naming the server `server_name`; the TLS handshake happens with the
    /// first read or write (or [`RawHttp::handshake`]). Reads time out after 30 s.
    pub fn new(
        addr: impl ToSocketAddrs,
        mut tls: rustls::ClientConfig,
        server_name: &str,
    ) -> RawHttp {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(tls), name).unwrap();
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        RawHttp(rustls::StreamOwned::new(conn, sock))
    }

    /// Completes the TLS handshake; the TLS error if the server refused it.
    pub fn handshake(&mut self) -> Result<(), rustls::Error> {
        while self.0.conn.is_handshaking() {
            if let Err(e) = self.0.conn.complete_io(&mut self.0.sock) {
                return Err(
                    match e.into_inner().map(|e| e.downcast::<rustls::Error>()) {
                        Some(Ok(e)) => *e,
                        _ => rustls::Error::General("handshake I/O failed".into()),
                    },
                );
            }
        }
        Ok(())
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes)?;
        self.0.flush()
    }

    /// Sends one chunk of a chunked body.
    pub fn chunk(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.send(format!("{:x}\r\n", bytes.len()).as_bytes())?;
        self.send(bytes)?;
        self.send(b"\r\n")
    }

    /// Reads the rest of the connection: the bytes, and how it ended (`closed`, or the
    /// error).
    pub fn read_all(&mut self) -> (Vec<u8>, String) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => return (got, "closed".into()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, e.to_string()),
            }
        }
    }

    /// Reads one response with a `Content-Length` body (or none): status, body.
    pub fn response(&mut self) -> (u16, Vec<u8>) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = self.0.read(&mut byte).unwrap();
            assert_eq!(n, 1, "connection closed in the response head: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).unwrap();
        (status, body)
    }
}
