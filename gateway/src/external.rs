//! ExternalName Services a KIngress splits to (other than the gateway's own
//! internal Service, which is dispatched without a hop): their names are
//! resolved in the background as soon as a table names them (within
//! [`CHECK`]) and again every `refresh`. A request that comes first waits for
//! its name's lookup rather than failing; `/readyz` waits for every name of
//! the table (bounded by `--resolve-wait`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use config_sync::TableReader;
use dataplane::table::BackendKind;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// `host:port` → address, for every ExternalName backend of the live table.
pub struct ExternalNames {
    table: TableReader,
    addrs: ArcSwap<HashMap<(Box<str>, u16), SocketAddr>>,
    /// How often every name is resolved again.
    pub refresh: Duration,
}

/// How often the live table is checked for new names.
pub const CHECK: Duration = Duration::from_millis(100);

impl ExternalNames {
    /// Names taken from the tables `table` serves.
    pub fn new(table: TableReader) -> Self {
        Self {
            table,
            addrs: ArcSwap::default(),
            refresh: Duration::from_secs(10),
        }
    }

    /// The address of `host:port`, once resolved.
    #[inline]
    pub fn addr(&self, host: &str, port: u16) -> Option<SocketAddr> {
        self.addrs.load().get(&(host.into(), port)).copied()
    }

    /// The address of `host:port`, looked up now if it has none yet (a
    /// request that came before the background lookup), within `limit`.
    pub async fn addr_or_resolve(
        &self,
        host: &str,
        port: u16,
        limit: Duration,
    ) -> Option<SocketAddr> {
        if let Some(addr) = self.addr(host, port) {
            return Some(addr);
        }
        let found = tokio::time::timeout(limit, tokio::net::lookup_host((host, port)))
            .await
            .ok()?
            .ok()?
            .next()?;
        self.addrs.rcu(|old| {
            let mut next = HashMap::clone(old);
            next.insert((host.into(), port), found);
            next
        });
        Some(found)
    }

    /// Names of the live table not resolved yet, as `host:port`.
    pub fn unresolved(&self) -> Vec<String> {
        let addrs = self.addrs.load();
        self.wanted()
            .into_iter()
            .filter(|k| !addrs.contains_key(k))
            .map(|(host, port)| format!("{host}:{port}"))
            .collect()
    }

    /// The external names of the live table.
    fn wanted(&self) -> Vec<(Box<str>, u16)> {
        let table = self.table.load();
        let mut names: Vec<(Box<str>, u16)> = table
            .backends()
            .filter_map(|b| match &b.kind {
                BackendKind::External(host, port) => Some((host.clone(), *port)),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Resolve every wanted name; a name that fails keeps its last address.
    async fn resolve(&self, wanted: &[(Box<str>, u16)]) {
        let old = self.addrs.load_full();
        let mut next = HashMap::with_capacity(wanted.len());
        for (host, port) in wanted {
            match tokio::net::lookup_host((&**host, *port)).await {
                Ok(mut found) => {
                    if let Some(addr) = found.next() {
                        next.insert((host.clone(), *port), addr);
                    }
                }
                Err(e) => {
                    tracing::warn!(name = %host, "cannot resolve ExternalName: {e}");
                    if let Some(addr) = old.get(&(host.clone(), *port)) {
                        next.insert((host.clone(), *port), *addr);
                    }
                }
            }
        }
        self.addrs.store(Arc::new(next));
    }
}

#[async_trait]
impl BackgroundService for ExternalNames {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut resolved: Vec<(Box<str>, u16)> = Vec::new();
        let mut generation = None;
        let mut since = Duration::ZERO;
        loop {
            // New names are looked up within CHECK of their table; all of
            // them every `refresh`. The names are read again only for a new table.
            let now = self.table.peek().generation;
            if generation != Some(now) || since >= self.refresh {
                let wanted = self.wanted();
                if wanted != resolved || since >= self.refresh {
                    self.resolve(&wanted).await;
                    resolved = wanted;
                    since = Duration::ZERO;
                }
                generation = Some(now);
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK) => since += CHECK,
                _ = shutdown.changed() => return,
            }
        }
    }
}
