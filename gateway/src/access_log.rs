//! The access log (`--access-log`): one JSON line per request.
//!
//! The request path only formats the line and hands it to a bounded queue;
//! a thread of its own writes the lines out. When the writer falls behind
//! (a slow disk, a blocked pipe) lines are dropped and counted, and no
//! request ever waits for the log.

use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;

/// Lines queued for the writer; past this many, lines are dropped.
pub const QUEUE_LINES: usize = 65_536;

/// Where `--access-log` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// No access log.
    Off,
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Off => f.write_str("off"),
            Target::Stdout => f.write_str("stdout"),
            Target::Stderr => f.write_str("stderr"),
            Target::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `--access-log`: `off`, `stdout`, `stderr` or a file path.
pub fn parse_target(s: &str) -> Result<Target, String> {
    match s {
        "" => Err("empty: use off, stdout, stderr or a file path".into()),
        "off" => Ok(Target::Off),
        "stdout" | "-" => Ok(Target::Stdout),
        "stderr" => Ok(Target::Stderr),
        path => Ok(Target::File(PathBuf::from(path))),
    }
}

/// What one line says about a request. Values the request never had (no
/// route, no upstream, no answer) are `None` and written as `null`.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// When the request started.
    pub time: SystemTime,
    /// The TCP peer's address (or the PROXY protocol's source).
    pub client: Option<SocketAddr>,
    /// The client behind `--trusted-hops` proxies, when `X-Forwarded-For`
    /// named one: written as `client`, and the peer as `peer`.
    pub forwarded_client: Option<IpAddr>,
    /// Request method.
    pub method: &'a str,
    /// Host as the client sent it (authority or `Host`).
    pub host: &'a [u8],
    /// Path, without the query (which may carry tokens).
    pub path: &'a str,
    /// Status sent to the client; `None` if no response was started.
    pub status: Option<u16>,
    /// Namespace and name of the route that matched, written as `namespace/name`.
    pub route: Option<(&'a str, &'a str)>,
    /// Namespace and name of the revision (or Service) picked.
    pub revision: Option<(&'a str, &'a str)>,
    /// The address the request was sent to (a pod, the activator, an ExternalName).
    pub upstream: Option<SocketAddr>,
    /// Request body bytes read from the client.
    pub bytes_in: usize,
    /// Response body bytes sent to the client.
    pub bytes_out: usize,
    /// Time from the request's start to its end.
    pub duration: Duration,
    /// The trace id of the client's W3C `traceparent`, if valid.
    pub trace_id: Option<&'a str>,
    /// How external authorization ended (`allowed`, `denied`, `error`),
    /// when the request was checked; written only then.
    pub authz: Option<&'static str>,
}

/// Append `entry` to `out` as one JSON line. Strings are escaped as JSON
/// (bytes that are not UTF-8 become U+FFFD), so a hostile Host or path
/// cannot forge a field or a line.
pub fn format(entry: &Entry<'_>, out: &mut Vec<u8>) {
    // Numbers, addresses and the time are written by hand: through
    // `core::fmt` they were most of the log's cost per request.
    out.extend_from_slice(b"{\"time\":\"");
    write_time(out, entry.time);
    out.extend_from_slice(b"\",\"client\":");
    match entry.forwarded_client {
        Some(client) => {
            let _ = write!(out, "\"{client}\",\"peer\":");
            opt_addr(out, entry.client);
        }
        None => opt_addr(out, entry.client),
    }
    out.extend_from_slice(b",\"method\":");
    json_str(out, entry.method);
    out.extend_from_slice(b",\"host\":");
    json_str(out, &String::from_utf8_lossy(entry.host));
    out.extend_from_slice(b",\"path\":");
    json_str(out, entry.path);
    out.extend_from_slice(b",\"status\":");
    match entry.status {
        Some(s) => write_u64(out, s.into()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"route\":");
    match entry.route {
        Some((namespace, name)) => {
            out.push(b'"');
            escape(out, namespace);
            out.push(b'/');
            escape(out, name);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"namespace\":");
    opt_str(out, entry.revision.map(|r| r.0));
    out.extend_from_slice(b",\"revision\":");
    opt_str(out, entry.revision.map(|r| r.1));
    out.extend_from_slice(b",\"upstream\":");
    opt_addr(out, entry.upstream);
    out.extend_from_slice(b",\"bytes_in\":");
    write_u64(out, entry.bytes_in as u64);
    out.extend_from_slice(b",\"bytes_out\":");
    write_u64(out, entry.bytes_out as u64);
    // Milliseconds with three decimals, from whole microseconds.
    let micros = u64::try_from(entry.duration.as_micros()).unwrap_or(u64::MAX);
    out.extend_from_slice(b",\"duration_ms\":");
    write_u64(out, micros / 1000);
    out.push(b'.');
    write_padded(out, micros % 1000, 3);
    out.extend_from_slice(b",\"trace_id\":");
    opt_str(out, entry.trace_id);
    if let Some(authz) = entry.authz {
        out.extend_from_slice(b",\"authz\":");
        opt_str(out, Some(authz));
    }
    out.extend_from_slice(b"}\n");
}

/// `n` in decimal.
fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `n` in decimal, zero-padded to `width` digits (`n` has at most `width`).
fn write_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let start = out.len();
    write_u64(out, n);
    let len = out.len() - start;
    if len < width {
        out.splice(start..start, std::iter::repeat_n(b'0', width - len));
    }
}

/// `"address:port"`, or `null`.
fn opt_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        Some(SocketAddr::V4(a)) => {
            out.push(b'"');
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_u64(out, octet.into());
            }
            out.push(b':');
            write_u64(out, a.port().into());
            out.push(b'"');
        }
        // Rarer, and its compressed form is worth the formatter.
        Some(a @ SocketAddr::V6(_)) => {
            let _ = write!(out, "\"{a}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
}

thread_local! {
    /// The last whole second formatted on this thread, and its text up to
    /// the seconds (`2026-11-29T16:20:01`): lines come many to a second.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 in UTC with milliseconds: `2026-11-29T16:20:01.514Z`.
fn write_time(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (last, mut text) = LAST_SECOND.get();
    if last != secs {
        let whole = std::time::UNIX_EPOCH + Duration::from_secs(secs);
        let formatted = humantime::format_rfc3339_seconds(whole).to_string();
        text.copy_from_slice(&formatted.as_bytes()[..19]);
        LAST_SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    out.push(b'.');
    write_padded(out, since.subsec_millis().into(), 3);
    out.push(b'Z');
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape(out, s);
    out.push(b'"');
}

/// `s` as the inside of a JSON string: quotes, backslashes and control
/// characters escaped, the rest as is.
fn escape(out: &mut Vec<u8>, s: &str) {
    let mut rest = 0;
    for (i, b) in s.bytes().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&s.as_bytes()[rest..i]);
        rest = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
    }
    out.extend_from_slice(&s.as_bytes()[rest..]);
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// The access log: a bounded queue in front of a writer thread.
#[derive(Clone)]
pub struct AccessLog {
    queue: SyncSender<Vec<u8>>,
    dropped: IntCounter,
    reopen: Option<Reopen>,
}

/// Asks the writer of a file log to open its path again (after logrotate
/// moved the file away), before it writes its next line.
#[derive(Clone, Debug)]
pub struct Reopen(Arc<AtomicBool>);

impl Reopen {
    /// Reopen before the next line.
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Where the writer thread writes.
enum Sink {
    /// A stream that stays as it is.
    Stream(io::BufWriter<Box<dyn Write + Send>>),
    /// A file, reopened by path on request.
    File {
        path: PathBuf,
        out: io::BufWriter<std::fs::File>,
        reopen: Arc<AtomicBool>,
    },
}

fn append_to(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

const WRITE_BUFFER: usize = 64 * 1024;

impl Sink {
    fn out(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stream(out) => out,
            Sink::File { path, out, reopen } => {
                if reopen.swap(false, Ordering::Relaxed) {
                    // Lines already written went to the old file.
                    let _ = out.flush();
                    match append_to(path) {
                        Ok(file) => *out = io::BufWriter::with_capacity(WRITE_BUFFER, file),
                        Err(e) => tracing::warn!(
                            "cannot reopen the access log {}: {e}; writing on to the file already open",
                            path.display()
                        ),
                    }
                }
                out
            }
        }
    }
}

impl AccessLog {
    /// Open `target` (a file is created or appended to) and start its
    /// writer; `None` for [`Target::Off`].
    pub fn open(target: &Target, dropped: IntCounter) -> io::Result<Option<Self>> {
        let sink = match target {
            Target::Off => return Ok(None),
            Target::Stdout => Sink::Stream(io::BufWriter::with_capacity(
                WRITE_BUFFER,
                Box::new(io::stdout()),
            )),
            Target::Stderr => Sink::Stream(io::BufWriter::with_capacity(
                WRITE_BUFFER,
                Box::new(io::stderr()),
            )),
            Target::File(path) => Sink::File {
                path: path.clone(),
                out: io::BufWriter::with_capacity(WRITE_BUFFER, append_to(path)?),
                reopen: Arc::default(),
            },
        };
        Self::start(sink, QUEUE_LINES, dropped).map(Some)
    }

    /// Write to `out` from a thread of its own, queueing up to `capacity` lines.
    pub fn with_writer(
        out: Box<dyn Write + Send>,
        capacity: usize,
        dropped: IntCounter,
    ) -> io::Result<Self> {
        let sink = Sink::Stream(io::BufWriter::with_capacity(WRITE_BUFFER, out));
        Self::start(sink, capacity, dropped)
    }

    fn start(sink: Sink, capacity: usize, dropped: IntCounter) -> io::Result<Self> {
        let reopen = match &sink {
            Sink::File { reopen, .. } => Some(Reopen(reopen.clone())),
            Sink::Stream(_) => None,
        };
        let (queue, lines) = sync_channel(capacity);
        let failed = dropped.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(lines, sink, failed))?;
        Ok(Self {
            queue,
            dropped,
            reopen,
        })
    }

    /// For a log written to a file: the handle that has it reopened.
    pub fn reopener(&self) -> Option<Reopen> {
        self.reopen.clone()
    }

    /// Queue one line for `entry`; if the queue is full, drop it and count it.
    pub fn record(&self, entry: &Entry<'_>) {
        let mut line = Vec::with_capacity(320);
        format(entry, &mut line);
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// The writer thread: buffer lines while more are queued, flush when the
/// queue is empty, so a quiet gateway's lines are out at once.
fn write_lines(lines: Receiver<Vec<u8>>, mut sink: Sink, failed: IntCounter) {
    let mut warned = false;
    let mut report = |e: io::Error, lost: u64, failed: &IntCounter| {
        failed.inc_by(lost);
        if !warned {
            warned = true;
            tracing::warn!("cannot write the access log: {e}; lines are dropped and counted in gateway_access_log_dropped_total");
        }
    };
    loop {
        let line = match lines.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Empty) => {
                if let Err(e) = sink.out().flush() {
                    report(e, 0, &failed);
                }
                match lines.recv() {
                    Ok(line) => line,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        if let Err(e) = sink.out().write_all(&line) {
            report(e, 1, &failed);
        }
    }
    let _ = sink.out().flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn entry() -> Entry<'static> {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_000_000_123),
            client: Some("127.0.0.1:40000".parse().unwrap()),
            forwarded_client: None,
            method: "GET",
            host: b"hello.default.example.com",
            path: "/",
            status: Some(200),
            route: Some(("default", "hello")),
            revision: Some(("default", "hello-00001")),
            upstream: Some("10.0.0.7:8080".parse().unwrap()),
            bytes_in: 0,
            bytes_out: 12,
            duration: Duration::from_micros(1_250),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            authz: None,
        }
    }

    fn line(e: &Entry<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        format(e, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let v = line(&entry());
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2026-11-30T00:53:20.123Z",
                "client": "127.0.0.1:40000",
                "method": "GET",
                "host": "hello.default.example.com",
                "path": "/",
                "status": 200,
                "route": "default/hello",
                "namespace": "default",
                "revision": "hello-00001",
                "upstream": "10.0.0.7:8080",
                "bytes_in": 0,
                "bytes_out": 12,
                "duration_ms": 1.25,
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            })
        );
    }

    #[test]
    fn a_client_behind_trusted_hops_is_the_client_and_the_peer_is_kept() {
        for (forwarded, written) in [
            ("203.0.113.7", "203.0.113.7"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            let v = line(&Entry {
                forwarded_client: Some(forwarded.parse().unwrap()),
                ..entry()
            });
            assert_eq!(v["client"], written);
            assert_eq!(v["peer"], "127.0.0.1:40000");
        }
        // Without one, no `peer` field.
        assert!(line(&entry()).get("peer").is_none());
        // Nor an `authz` field for a request no server was asked about.
        assert!(line(&entry()).get("authz").is_none());
        let checked = line(&Entry {
            authz: Some("denied"),
            ..entry()
        });
        assert_eq!(checked["authz"], "denied");
    }

    #[test]
    fn missing_values_are_null_and_hostile_strings_stay_inside_their_field() {
        let e = Entry {
            host: b"evil\"\n{\"status\":1}\xff",
            path: "/a\"b\\c\u{1}\t\u{7f}é",
            status: None,
            route: None,
            revision: None,
            upstream: None,
            client: None,
            trace_id: None,
            ..entry()
        };
        let v = line(&e);
        assert_eq!(v["host"], "evil\"\n{\"status\":1}\u{fffd}");
        assert_eq!(v["path"], "/a\"b\\c\u{1}\t\u{7f}é");
        for field in [
            "status",
            "route",
            "namespace",
            "revision",
            "upstream",
            "client",
            "trace_id",
        ] {
            assert!(v[field].is_null(), "{field}: {v}");
        }
    }

    #[test]
    fn numbers_addresses_and_times_are_written_as_the_formatter_would() {
        let text = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            String::from_utf8(out).unwrap()
        };
        for n in [0, 7, 10, 999, 1000, 65535, u64::MAX] {
            assert_eq!(text(&|o| write_u64(o, n)), n.to_string());
        }
        assert_eq!(text(&|o| write_padded(o, 5, 3)), "005");
        assert_eq!(text(&|o| write_padded(o, 999, 3)), "999");
        for addr in ["0.0.0.0:0", "255.255.255.255:65535", "[fd00::7]:8080"] {
            let a: SocketAddr = addr.parse().unwrap();
            assert_eq!(text(&|o| opt_addr(o, Some(a))), format!("\"{a}\""));
        }
        assert_eq!(text(&|o| opt_addr(o, None)), "null");
        // The per-thread second changes with the time, and milliseconds pad.
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        for (t, want) in [
            (base, "2026-11-30T00:53:20.000Z"),
            (base + Duration::from_millis(7), "2026-11-30T00:53:20.007Z"),
            (
                base + Duration::from_millis(1_999),
                "2026-11-30T00:53:21.999Z",
            ),
            (
                base - Duration::from_secs(86_400),
                "2026-11-29T00:53:20.000Z",
            ),
        ] {
            assert_eq!(text(&|o| write_time(o, t)), want);
        }
        let e = Entry {
            duration: Duration::from_micros(12_345_678),
            ..entry()
        };
        assert_eq!(line(&e)["duration_ms"], 12_345.678);
    }

    #[test]
    fn parse_target_names_each_destination() {
        assert_eq!(parse_target("off"), Ok(Target::Off));
        assert_eq!(parse_target("stdout"), Ok(Target::Stdout));
        assert_eq!(parse_target("stderr"), Ok(Target::Stderr));
        assert_eq!(
            parse_target("/var/log/a.log"),
            Ok(Target::File("/var/log/a.log".into()))
        );
        assert!(parse_target("").is_err());
    }

    /// A writer that blocks until released, like a full pipe; it says when
    /// it first blocks.
    struct Stuck {
        written: Arc<Mutex<Vec<u8>>>,
        blocked: std::sync::mpsc::Sender<()>,
        gate: std::sync::mpsc::Receiver<()>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.blocked.send(());
            // Returns once the test drops its sender.
            let _ = self.gate.recv();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_drops_and_counts_lines_instead_of_blocking() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let (blocked_tx, blocked) = std::sync::mpsc::channel();
        let (release, gate) = std::sync::mpsc::channel();
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let stuck = Stuck {
            written: written.clone(),
            blocked: blocked_tx,
            gate,
        };
        let log = AccessLog::with_writer(Box::new(stuck), 2, dropped.clone()).unwrap();
        // The first line reaches the writer, which blocks flushing it...
        log.record(&entry());
        blocked.recv_timeout(Duration::from_secs(5)).unwrap();
        // ...so of the next ten, two fit the queue and eight are dropped at once.
        for _ in 0..10 {
            log.record(&entry());
        }
        assert_eq!(dropped.get(), 8);
        drop(release);
        drop(log);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let lines = written
                .lock()
                .unwrap()
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            if lines == 3 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{lines} lines written, not 3"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
