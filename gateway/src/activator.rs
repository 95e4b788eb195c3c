//! Where requests for scaled-to-zero revisions go: Knative's activator.
//! `--activator` is `HOST:PORT`; a host name is resolved in the background
//! (never on the request path) and re-resolved periodically.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Header naming the revision a request is for.
pub const REVISION_HEADER: &str = "Knative-Serving-Revision";
/// Header naming the revision's namespace.
pub const NAMESPACE_HEADER: &str = "Knative-Serving-Namespace";

/// The activator's address, kept fresh.
pub struct Activator {
    target: String,
    addr: ArcSwapOption<SocketAddr>,
    /// How often a host name is resolved again.
    pub refresh: Duration,
    /// Reached over TLS (`--activator-tls`): its certificate names `kn-routing`.
    tls: bool,
    /// Its HTTP/2 cleartext port on the same host (Knative's 8013), for
    /// revisions that speak HTTP/2.
    h2_port: u16,
}

/// Knative's activator port for HTTP/2 cleartext.
pub const DEFAULT_H2_PORT: u16 = 8013;

impl Activator {
    /// An activator at `target` (`HOST:PORT`); an IP literal needs no resolution.
    pub fn new(target: &str) -> Self {
        Self {
            target: target.to_owned(),
            addr: ArcSwapOption::new(target.parse().ok().map(Arc::new)),
            refresh: Duration::from_secs(10),
            tls: false,
            h2_port: DEFAULT_H2_PORT,
        }
    }

    /// Send HTTP/2 cleartext to `port` of the activator's host.
    pub fn with_h2_port(mut self, port: u16) -> Self {
        self.h2_port = port;
        self
    }

    /// Where a request goes now, resolving the name first if no lookup has
    /// succeeded yet (a request in the first moments after start), within
    /// `limit`: the HTTP/1.1 port, or with `h2` the HTTP/2 port (over TLS
    /// both go to the one TLS port, ALPN deciding).
    pub async fn addr_or_resolve(&self, h2: bool, limit: Duration) -> Option<SocketAddr> {
        let addr = match self.addr() {
            Some(addr) => addr,
            None => {
                let _ = tokio::time::timeout(limit, self.resolve()).await;
                self.addr()?
            }
        };
        Some(if h2 && !self.tls {
            SocketAddr::new(addr.ip(), self.h2_port)
        } else {
            addr
        })
    }

    /// Reach it over TLS (Knative's `system-internal-tls`) when `tls`.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Whether it is reached over TLS.
    #[inline]
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The address to send to now; `None` while it cannot be resolved.
    #[inline]
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.load().as_deref().copied()
    }

    /// `HOST:PORT` as configured.
    pub fn target(&self) -> &str {
        &self.target
    }

    async fn resolve(&self) {
        match tokio::net::lookup_host(self.target.as_str()).await {
            Ok(mut addrs) => {
                let found = addrs.next();
                if found.is_some() && found != self.addr() {
                    tracing::info!(activator = %self.target, address = ?found, "activator resolved");
                }
                if found.is_some() {
                    self.addr.store(found.map(Arc::new));
                }
            }
            // Keep the last address: a DNS hiccup should not turn cold starts into 503s.
            Err(e) => tracing::warn!(activator = %self.target, "cannot resolve the activator: {e}"),
        }
    }
}

/// Re-resolves the activator's host name until shutdown.
pub struct ActivatorResolver(pub Arc<Activator>);

#[async_trait]
impl BackgroundService for ActivatorResolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.0.target.parse::<SocketAddr>().is_ok() {
            return;
        }
        loop {
            self.0.resolve().await;
            tokio::select! {
                _ = tokio::time::sleep(self.0.refresh) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Check a `HOST:PORT` argument.
pub fn parse_target(s: &str) -> Result<String, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{s:?} has no valid port"))?;
    Ok(s.to_owned())
}
