//! Signals: shutdown without dropping requests (SIGTERM), the binary
//! upgrade (SIGQUIT), and SIGHUP for the access log.
//!
//! pingora closes every listener the moment SIGTERM arrives, admin included,
//! so a load balancer still sending to the pod gets refused connections. Here
//! SIGTERM first turns `/readyz` to 503 and keeps every listener serving for
//! `--shutdown-grace`, while load balancers and endpoints catch up; only then
//! is pingora told to stop. It closes the listeners, tells keep-alive clients
//! to close (`Connection: close`, HTTP/2 GOAWAY), and gives requests in
//! flight `--shutdown-timeout` to finish (server.rs maps that to pingora's
//! grace period, during which its runtimes keep running).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

/// Whether the process is draining (SIGTERM received).
#[derive(Debug, Default)]
pub struct Drain(AtomicBool);

impl Drain {
    /// Draining since SIGTERM: `/readyz` answers 503.
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// pingora's shutdown signal, with SIGTERM held back for the grace period.
/// SIGINT stops at once (also during the grace period); SIGQUIT hands the
/// listening sockets to a new process started with `--upgrade` (pingora's
/// upgrade), then drains as after the grace period.
pub struct DrainSignal {
    /// Set when SIGTERM arrives.
    pub drain: Arc<Drain>,
    /// How long the listeners keep serving after SIGTERM.
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainSignal {
    async fn recv(&self) -> ShutdownSignal {
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).unwrap_or_else(|e| panic!("cannot listen for {name}: {e}"))
        };
        let mut term = listen(SignalKind::terminate(), "SIGTERM");
        let mut int = listen(SignalKind::interrupt(), "SIGINT");
        let mut quit = listen(SignalKind::quit(), "SIGQUIT");
        tokio::select! {
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => return ShutdownSignal::FastShutdown,
            _ = term.recv() => {}
        }
        self.drain.start();
        tracing::info!(
            grace = ?self.grace,
            "SIGTERM: /readyz answers 503; serving on every listener until the grace period ends"
        );
        tokio::select! {
            _ = tokio::time::sleep(self.grace) => {}
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        tracing::info!("grace period over: closing the listeners, finishing requests in flight");
        ShutdownSignal::GracefulTerminate
    }
}

/// SIGHUP, until shutdown: the access log file is reopened by its path (for
/// logrotate's move-and-signal), where there is one. Without this, SIGHUP
/// would end the process. The snapshot file needs no signal: it is watched.
pub async fn on_hangup(
    reopen: Option<crate::access_log::Reopen>,
    mut shutdown: pingora::server::ShutdownWatch,
) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => match &reopen {
                Some(r) => {
                    r.request();
                    tracing::info!("SIGHUP: the access log is reopened before its next line");
                }
                None => tracing::info!("SIGHUP: no access log file to reopen"),
            },
            _ = shutdown.changed() => return,
        }
    }
}
