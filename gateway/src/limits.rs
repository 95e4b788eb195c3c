//! Limits that keep hostile or runaway clients from taking the process down:
//! a cap on concurrent client connections (here, around pingora's proxy
//! app), and the request head limits handed to pingora's HTTP/1.x reader
//! (vendor/README.md, "request head limits").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::http::v1::server::RequestHeadLimits;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;

/// Request head limits as the gateway's flags give them.
pub fn request_head(max_bytes: usize, max_headers: usize, timeout: Duration) -> RequestHeadLimits {
    RequestHeadLimits {
        max_bytes,
        max_headers,
        timeout: Some(timeout),
        // 431 tells a client its headers (often cookies or tokens) are too
        // large, which a bare 400 does not.
        status_431: true,
    }
}

/// Counts of the connection cap, exported as metrics.
#[derive(Clone)]
pub struct ConnectionCounts {
    /// Client connections open on the proxy listeners: the cap's own count,
    /// which `/metrics` reads when scraped.
    pub open: Arc<AtomicUsize>,
    /// Connections closed at once because the cap was reached.
    pub refused: IntCounter,
}

/// A [`ServerApp`] that serves at most `max` client connections at once and
/// closes any connection past that as soon as it is accepted. The count is
/// one atomic add and subtract per connection, nothing per request.
pub struct ConnectionLimit<A> {
    inner: Arc<A>,
    max: usize,
    counts: ConnectionCounts,
}

impl<A> ConnectionLimit<A> {
    /// Wrap `inner`, allowing `max` concurrent connections.
    pub fn new(inner: A, max: usize, counts: ConnectionCounts) -> Self {
        Self {
            inner: Arc::new(inner),
            max,
            counts,
        }
    }
}

/// Releases a connection's slot when its processing ends, however it ends.
struct Slot<'a, A>(&'a ConnectionLimit<A>);

impl<A> Drop for Slot<'_, A> {
    fn drop(&mut self) {
        self.0.counts.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionLimit<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.counts.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.counts.open.fetch_sub(1, Ordering::Relaxed);
            self.counts.refused.inc();
            tracing::debug!(
                max = self.max,
                "connection refused: --max-connections reached"
            );
            return None; // dropping the stream closes it
        }
        let _slot = Slot(self);
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Raise the open-file limit to its hard maximum (each client connection
/// needs a descriptor, and most an upstream one too) and return the new soft
/// limit.
pub fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

/// The connection cap `--max-connections 0` stands for: half the descriptors
/// (the other half for upstream connections) less a reserve for listeners,
/// the API server, files and logs.
pub fn auto_max_connections(open_files: u64) -> usize {
    const RESERVE: u64 = 128;
    (open_files.saturating_sub(RESERVE) / 2).max(64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_cap_leaves_room_for_upstream_connections() {
        assert_eq!(auto_max_connections(1024), 448);
        assert_eq!(auto_max_connections(1_048_576), 524_224);
        // Never so low that the gateway cannot serve at all.
        assert_eq!(auto_max_connections(100), 64);
    }

    #[test]
    fn raising_the_open_file_limit_never_lowers_it() {
        let mut before = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_open_files.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut before) },
            0
        );
        let now = raise_open_files();
        assert!(now >= before.rlim_cur);
        assert!(now <= before.rlim_max);
    }
}
