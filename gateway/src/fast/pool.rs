//! Idle upstream connections of the fast path: plain TCP streams, or TLS
//! streams to Knative's `https` ports (system-internal TLS), kept per worker
//! thread by endpoint address. A worker thread runs its own runtime and its
//! connections never leave it (no work stealing, `server.rs`), so the pool
//! needs no lock, task or channel.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An upstream connection: plain, or TLS (verified as `config_sync::trust` says).
pub enum Conn {
    /// HTTP/1.1 in cleartext.
    Plain(TcpStream),
    /// HTTP/1.1 over TLS 1.3.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The idle connections of one worker thread, by address and TLS or not.
struct Idle {
    by_addr: HashMap<(SocketAddr, bool), Vec<Conn>>,
    count: usize,
    /// When closed connections were last let go.
    swept: Option<Instant>,
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle {
        by_addr: HashMap::new(),
        count: 0,
        swept: None,
    });
}

/// How often a release also lets go of the idle connections backends closed
/// meanwhile (each holds a socket and a file descriptor until then).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Whether `conn` can carry another request: open, nothing unread on its
/// socket (a backend that closed it, or sent bytes nobody asked for, a TLS
/// alert among them, loses it).
fn usable(conn: &Conn) -> bool {
    let mut probe = [0u8; 1];
    matches!(conn.tcp().try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The most recently returned idle connection to `addr` (over TLS or not)
/// that is still usable: a closed one is found here rather than in the
/// middle of a request.
pub fn take(addr: SocketAddr, tls: bool) -> Option<Conn> {
    IDLE.with_borrow_mut(|idle| {
        let conns = idle.by_addr.get_mut(&(addr, tls))?;
        while let Some(stream) = conns.pop() {
            idle.count -= 1;
            if usable(&stream) {
                return Some(stream);
            }
        }
        None
    })
}

/// Keep `stream` to `addr` for reuse, unless this thread holds `max` already.
/// `now`, about the present, paces the sweep of closed idle connections.
pub fn put(addr: SocketAddr, stream: Conn, max: usize, now: Instant) {
    IDLE.with_borrow_mut(|idle| {
        if idle
            .swept
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
        {
            idle.swept = Some(now);
            let mut kept = 0;
            for conns in idle.by_addr.values_mut() {
                conns.retain(usable);
                kept += conns.len();
            }
            idle.by_addr.retain(|_, conns| !conns.is_empty());
            idle.count = kept;
        }
        if idle.count >= max {
            return;
        }
        idle.count += 1;
        let tls = stream.is_tls();
        idle.by_addr.entry((addr, tls)).or_default().push(stream);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(flavor = "current_thread")]
    async fn an_open_connection_is_reused_and_a_closed_or_chatty_one_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = Conn::Plain(TcpStream::connect(addr).await.unwrap());
        let (mut server, _) = listener.accept().await.unwrap();
        put(addr, client, 8, Instant::now());
        assert!(
            take(addr, true).is_none(),
            "a plain connection is no TLS one"
        );
        let client = take(addr, false).expect("an idle, open connection comes back");
        assert!(take(addr, false).is_none(), "taken once");

        // Bytes nobody asked for: the connection is dropped.
        put(addr, client, 8, Instant::now());
        server.write_all(b"x").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(take(addr, false).is_none());

        // Closed by the backend: dropped too.
        let client = Conn::Plain(TcpStream::connect(addr).await.unwrap());
        let (server, _) = listener.accept().await.unwrap();
        put(addr, client, 8, Instant::now());
        drop(server);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(take(addr, false).is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_pool_holds_at_most_its_cap() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut servers = Vec::new();
        for _ in 0..3 {
            let client = Conn::Plain(TcpStream::connect(addr).await.unwrap());
            servers.push(listener.accept().await.unwrap());
            put(addr, client, 2, Instant::now());
        }
        assert!(take(addr, false).is_some());
        assert!(take(addr, false).is_some());
        assert!(take(addr, false).is_none(), "the third was not kept");
    }
}
