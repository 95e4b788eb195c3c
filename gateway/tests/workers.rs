//! How client connections are spread over the proxy's worker threads: the
//! real gateway binary with two threads, real connections on loopback, and
//! the kernel's view of which thread's epoll instance watches each socket
//! (`/proc/<pid>/fdinfo`; each worker thread runs its own I/O driver).

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Socket inodes of the established connections accepted on `port`.
fn accepted_on(pid: u32, port: u16) -> HashSet<String> {
    let mut inodes = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f[1].rsplit(':').next().unwrap();
            // 01: ESTABLISHED.
            if u16::from_str_radix(local_port, 16).unwrap() == port && f[3] == "01" {
                inodes.insert(f[9].to_owned());
            }
        }
    }
    inodes
}

/// For each epoll instance of the process, how many of `sockets` it watches.
/// Instances are told apart by what they watch (two fds may share one).
fn watched_per_epoll(pid: u32, sockets: &HashSet<String>) -> Vec<usize> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    let mut inode_of = HashMap::new();
    let mut epolls = Vec::new();
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.display().to_string();
        let fd: u32 = fd.file_name().to_str().unwrap().parse().unwrap();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            inode_of.insert(fd, inode.to_owned());
        } else if target == "anon_inode:[eventpoll]" {
            epolls.push(fd);
        }
    }
    let mut seen = HashSet::new();
    let mut counts = Vec::new();
    for epoll in epolls {
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epoll}")) else {
            continue;
        };
        let mut watched: Vec<u32> = info
            .lines()
            .filter_map(|l| l.strip_prefix("tfd:"))
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        watched.sort_unstable();
        if !seen.insert(watched.clone()) {
            continue;
        }
        let ours = watched
            .iter()
            .filter(|fd| inode_of.get(fd).is_some_and(|i| sockets.contains(i)))
            .count();
        if ours > 0 {
            counts.push(ours);
        }
    }
    counts.sort_unstable();
    counts
}

/// One keep-alive request on a new connection, which is kept open.
async fn connect_and_ask(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: web.ns.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_evenly_and_each_is_watched_by_its_own_thread() {
    let b = Backend::start("rev-a").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[b.addr]);
    // The harness starts every gateway with two worker threads.
    let gw = Gateway::serve_with(&snap, closed(), &[]).await;
    // One after another, each answered before the next: a random thread per
    // connection (pingora's default) splits 40 evenly one time in eight.
    let mut open = Vec::new();
    for _ in 0..40 {
        open.push(connect_and_ask(gw.http).await);
    }
    let sockets = accepted_on(gw.pid(), gw.http.port());
    assert_eq!(sockets.len(), 40);
    // Two worker threads, twenty each; and no socket is left with the
    // accepting thread's driver while another thread serves it (that would
    // show as one instance watching all forty).
    assert_eq!(watched_per_epoll(gw.pid(), &sockets), vec![20, 20]);

    // A closed connection frees its place: the next goes where it was.
    let freed = open.swap_remove(0);
    drop(freed);
    eventually(5, "the closed connection gone", || {
        std::future::ready(accepted_on(gw.pid(), gw.http.port()).len() == 39)
    })
    .await;
    // The count is released as the connection's task ends, just after the
    // socket closes.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    open.push(connect_and_ask(gw.http).await);
    let sockets = accepted_on(gw.pid(), gw.http.port());
    assert_eq!(watched_per_epoll(gw.pid(), &sockets), vec![20, 20]);
}
