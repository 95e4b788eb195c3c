//! PROXY protocol v1 and v2 on the external listeners (`--proxy-protocol`).
//!
//! A load balancer in front of the gateway (AWS NLB, HAProxy, ...) opens
//! each connection with a header naming the real client. It is read before
//! anything else (before TLS on HTTPS listeners; vendor/README.md, "pre-TLS
//! callback on plaintext"), and the client's address replaces the load
//! balancer's for everything after: `X-Forwarded-For`, the access log.
//! The internal listeners never expect one, so Knative's prober and
//! in-cluster clients connect as they are.

use std::os::unix::io::AsRawFd;

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::{Error, ErrorType};
use tokio::io::AsyncReadExt;

pub use wire::proxy_header::{parse, Header, ParseError, V2_MAX};

/// Reads the PROXY header of every connection to one of `ports` (the
/// external listeners) before anything else. The listeners' handshake
/// timeout bounds the wait (vendor/README.md, "handshake timeout").
pub struct ProxyProtocol {
    ports: Vec<u16>,
}

impl ProxyProtocol {
    /// Expect a header on connections to `ports`.
    pub fn new(ports: Vec<u16>) -> Self {
        Self { ports }
    }
}

fn refuse(why: impl Into<String>) -> Box<Error> {
    Error::explain(ErrorType::ConnectError, why.into())
}

/// Read a whole header from `stream`, then give the bytes read past it back.
async fn read_header(stream: &mut L4Stream) -> pingora::Result<Header> {
    let mut buf = vec![0u8; 256];
    let mut filled = 0;
    loop {
        match parse(&buf[..filled]) {
            Ok((header, len)) => {
                stream.rewind(&buf[len..filled]);
                return Ok(header);
            }
            Err(ParseError::Incomplete) => {}
            Err(e) => return Err(refuse(e.to_string())),
        }
        if filled == buf.len() {
            buf.resize((buf.len() * 2).min(V2_MAX), 0);
        }
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(|e| refuse(format!("reading the PROXY header: {e}")))?;
        if n == 0 {
            return Err(refuse("closed before a whole PROXY header"));
        }
        filled += n;
    }
}

#[async_trait]
impl PreTlsProcess for ProxyProtocol {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let Some(digest) = stream.get_socket_digest() else {
            return Ok(());
        };
        let local = digest.local_addr().cloned();
        let port = local.as_ref().and_then(|a| a.as_inet()).map(|a| a.port());
        if !port.is_some_and(|p| self.ports.contains(&p)) {
            return Ok(()); // an internal listener: no header
        }
        let header = match read_header(stream).await {
            Ok(header) => header,
            Err(e) => {
                tracing::debug!(peer = ?digest.peer_addr(), "connection closed: {e}");
                return Err(e);
            }
        };
        if let Header::Proxied { source, .. } = header {
            let proxied = SocketDigest::from_raw_fd(stream.as_raw_fd());
            let _ = proxied.peer_addr.set(Some(PingoraAddr::Inet(source)));
            let _ = proxied.local_addr.set(local);
            stream.set_socket_digest(proxied);
        }
        Ok(())
    }
}
