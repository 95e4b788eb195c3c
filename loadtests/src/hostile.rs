//! Malformed and request-smuggling cases, sent byte for byte to a proxy in
//! front of a [`Recorder`] backend. One list serves the gateway's test suite
//! (which asserts every verdict) and the `hostile` load-test scenario (which
//! prints the gateway's answers beside nginx's, HAProxy's and Envoy's).
//!
//! A case is safe when the proxy answers with one of the statuses the case
//! allows, forwards no more requests than it allows (with the body it must
//! carry, if any), and the backend, a strict HTTP/1.1 parser (hyper), never
//! sees a request the client did not send as one: no path containing
//! `smuggled` ever reaches it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A request the backend received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The request target's path.
    pub path: String,
    /// The body as far as it arrived.
    pub body: Vec<u8>,
    /// The body arrived whole (framing intact).
    pub complete: bool,
}

/// A backend that records every request it parses and answers `200 ok`.
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Listen on a free loopback port.
    pub async fn start() -> std::io::Result<Recorder> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = tokio::time::timeout(
                                Duration::from_secs(3),
                                req.into_body().collect(),
                            )
                            .await;
                            let (body, complete) = match body {
                                Ok(Ok(b)) => (b.to_bytes().to_vec(), true),
                                _ => (Vec::new(), false),
                            };
                            lock(&log).push(Seen {
                                path,
                                body,
                                complete,
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Recorder { addr, seen, task })
    }

    /// The requests seen of the case whose paths start with `prefix`: the
    /// prefix itself, or followed by `/` or `-` (so `/case-1` never takes
    /// `/case-10`'s).
    pub fn seen(&self, prefix: &str) -> Vec<Seen> {
        lock(&self.seen)
            .iter()
            .filter(|s| {
                s.path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '-']))
            })
            .cloned()
            .collect()
    }

    /// Every request seen.
    pub fn all(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }

    /// Forget every request seen so far (before the next proxy's run).
    pub fn clear(&self) {
        lock(&self.seen).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the client does, in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Wait this long.
    Pause(Duration),
}

/// What a safe proxy may do with a case. A refusal is any status from 400
/// up, or the connection closed without an answer; which one is the
/// proxy's choice (the gateway's own are asserted in its tests).
#[derive(Debug, Clone)]
pub struct Expect {
    /// Refusing the request is safe.
    pub may_refuse: bool,
    /// Serving it (2xx) is safe, and then the backend must have received
    /// this body whole.
    pub serve: Option<&'static [u8]>,
    /// Most requests forwarded to the backend. A refused request may only
    /// have reached it cut off (its body incomplete).
    pub max_forwarded: usize,
    /// Answers allowed on the connection (pipelined cases allow two).
    pub max_answers: usize,
}

impl Expect {
    /// Must be refused; nothing forwarded.
    const fn refused() -> Self {
        Expect {
            may_refuse: true,
            serve: None,
            max_forwarded: 0,
            max_answers: 1,
        }
    }

    /// Must be served, forwarded once with `body`.
    const fn served(body: &'static [u8]) -> Self {
        Expect {
            may_refuse: false,
            serve: Some(body),
            max_forwarded: 1,
            max_answers: 1,
        }
    }

    /// Refused, or served and forwarded once with `body` whole.
    const fn either(body: &'static [u8]) -> Self {
        Expect {
            may_refuse: true,
            serve: Some(body),
            max_forwarded: 1,
            max_answers: 1,
        }
    }

    /// A body broken mid-way: refused, and if its head was already
    /// forwarded (a streaming proxy), the backend never saw it complete.
    const fn cut() -> Self {
        Expect {
            may_refuse: true,
            serve: None,
            max_forwarded: 1,
            max_answers: 1,
        }
    }
}

/// One malformed or ambiguous request.
#[derive(Debug, Clone)]
pub struct Case {
    /// Short name, for tables and failures.
    pub name: &'static str,
    /// What it tries.
    pub what: &'static str,
    /// The path prefix of every request it sends (`/case-NN`).
    pub prefix: String,
    /// What the client sends.
    pub steps: Vec<Step>,
    /// What a safe proxy does.
    pub expect: Expect,
}

/// Time a case waits for more bytes after the last ones.
const QUIET: Duration = Duration::from_millis(500);

/// Every case for a route at `host`. With `trickle`, one more: a head sent
/// a header line every 250 ms for that long (slowloris), which a proxy with
/// a shorter header timeout cuts with 408.
pub fn cases(host: &str, trickle: Option<Duration>) -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |name: &'static str, what: &'static str, raw: &str, expect: Expect| {
        let prefix = format!("/case-{:02}", out.len());
        let mut bytes = raw.replace("{H}", host).replace("{P}", &prefix);
        if let Some(at) = bytes.find("\r\n\r\n") {
            // {L}: the length of what follows the head.
            let body = bytes.len() - at - 4;
            bytes = bytes.replace("{L}", &body.to_string());
        }
        out.push(Case {
            name,
            what,
            prefix,
            steps: vec![Step::Send(bytes.into_bytes())],
            expect,
        });
    };
    use Expect as E;
    let smuggled = "GET {P}-smuggled HTTP/1.1\r\nHost: {H}\r\n\r\n";
    add(
        "cl-te",
        "Content-Length and Transfer-Encoding: chunked, a request after the chunked end",
        &format!("POST {{P}} HTTP/1.1\r\nHost: {{H}}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        E::either(b""),
    );
    add(
        "te-cl",
        "Transfer-Encoding before Content-Length, a request inside the length",
        &format!("POST {{P}} HTTP/1.1\r\nHost: {{H}}\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"),
        E::either(b""),
    );
    add(
        "cl-differing",
        "two different Content-Lengths",
        "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        E::refused(),
    );
    add(
        "cl-repeated",
        "the same Content-Length twice",
        "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        E::either(b"hello"),
    );
    add(
        "cl-list-differing",
        "Content-Length: 5, 6",
        "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5, 6\r\n\r\nhello!",
        E::refused(),
    );
    add(
        "cl-plus",
        "a signed Content-Length (+5)",
        "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: +5\r\n\r\nhello",
        E::refused(),
    );
    add(
        "cl-negative",
        "Content-Length: -1",
        "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: -1\r\n\r\nhello",
        E::refused(),
    );
    add(
        "cl-hex",
        "Content-Length: 0x5",
        "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 0x5\r\n\r\nhello",
        E::refused(),
    );
    add(
        "cl-overflow",
        "a Content-Length past 2^64",
        "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 184467440737095516160\r\n\r\nhello",
        E::refused(),
    );
    add(
        "cl-space-inside",
        "Content-Length: 1 5",
        "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 1 5\r\n\r\nhello",
        E::refused(),
    );
    add(
        "te-not-last",
        "Transfer-Encoding: chunked, identity (chunked not last)",
        &format!("POST {{P}} HTTP/1.1\r\nHost: {{H}}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        E::refused(),
    );
    add(
        "te-unknown",
        "Transfer-Encoding: gzip alone",
        &format!("POST {{P}} HTTP/1.1\r\nHost: {{H}}\r\nTransfer-Encoding: gzip\r\n\r\n{smuggled}"),
        E::refused(),
    );
    add(
        "te-xchunked",
        "Transfer-Encoding: xchunked with a Content-Length",
        &format!("POST {{P}} HTTP/1.1\r\nHost: {{H}}\r\nContent-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        E::refused(),
    );
    add(
        "te-space-before-colon",
        "'Transfer-Encoding : chunked' with a Content-Length",
        &format!("POST {{P}} HTTP/1.1\r\nHost: {{H}}\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        E::refused(),
    );
    add(
        "te-vertical-tab",
        "Transfer-Encoding:<VT>chunked with a Content-Length",
        &format!("POST {{P}} HTTP/1.1\r\nHost: {{H}}\r\nContent-Length: 5\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        E::refused(),
    );
    add(
        "te-http10",
        "Transfer-Encoding in an HTTP/1.0 request",
        &format!("POST {{P}} HTTP/1.0\r\nHost: {{H}}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        E::refused(),
    );
    add(
        "obs-fold",
        "a header folded onto a second line",
        "GET {P} HTTP/1.1\r\nHost: {H}\r\nX-Folded: a\r\n b\r\n\r\n",
        // RFC 9112 5.2: refuse, or unfold before forwarding.
        E::either(b""),
    );
    add(
        "bare-lf",
        "lines ending in LF alone",
        "GET {P} HTTP/1.1\nHost: {H}\n\n",
        E::either(b""),
    );
    add(
        "bare-cr",
        "a line ending in CR alone",
        "GET {P} HTTP/1.1\rHost: {H}\r\n\r\n",
        E::refused(),
    );
    add(
        "nul-in-value",
        "a NUL byte in a header value",
        "GET {P} HTTP/1.1\r\nHost: {H}\r\nX-Nul: a\0b\r\n\r\n",
        E::refused(),
    );
    add(
        "nul-in-path",
        "a NUL byte in the path (refused, or forwarded percent-encoded)",
        "GET {P}/a\0b HTTP/1.1\r\nHost: {H}\r\n\r\n",
        E::either(b""),
    );
    add(
        "cr-in-value",
        "a bare CR inside a header value",
        "GET {P} HTTP/1.1\r\nHost: {H}\r\nX-Cr: a\rb\r\n\r\n",
        // RFC 9110 5.5: refuse, or replace the CR with a space.
        E::either(b""),
    );
    add(
        "space-in-name",
        "a space inside a header name",
        "GET {P} HTTP/1.1\r\nHost: {H}\r\nX Space: 1\r\n\r\n",
        E::refused(),
    );
    add(
        "chunk-size-invalid",
        "a chunk size that is not hex",
        "POST {P} HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        E::cut(),
    );
    add(
        "chunk-size-overflow",
        "a chunk size past 2^64",
        "POST {P} HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
        E::cut(),
    );
    add(
        "chunk-extension",
        "a chunk extension (valid)",
        "POST {P} HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n",
        E::served(b"hello"),
    );
    add(
        "chunk-missing-crlf",
        "chunk data not followed by CRLF",
        &format!("POST {{P}} HTTP/1.1\r\nHost: {{H}}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX0\r\n\r\n{smuggled}"),
        E::cut(),
    );
    add(
        "body-holds-request",
        "a Content-Length body that is itself a request",
        "GET {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: {L}\r\n\r\nGET /inner-smuggled HTTP/1.1\r\nHost: x.example.com\r\n\r\n",
        E::either(b"GET /inner-smuggled HTTP/1.1\r\nHost: x.example.com\r\n\r\n"),
    );
    add(
        "absolute-form-other-host",
        "an absolute-form target naming another host than Host",
        "GET http://nowhere.example.net{P} HTTP/1.1\r\nHost: {H}\r\n\r\n",
        E::refused(),
    );
    add(
        "absolute-form",
        "an absolute-form target naming the Host",
        "GET http://{H}{P} HTTP/1.1\r\nHost: {H}\r\n\r\n",
        E::served(b""),
    );
    add(
        "http09",
        "an HTTP/0.9 request line",
        "GET {P}\r\n\r\n",
        E::refused(),
    );
    add(
        "version-minor",
        "a higher minor version (HTTP/1.7)",
        "GET {P} HTTP/1.7\r\nHost: {H}\r\n\r\n",
        // RFC 9110 6.2: served as the highest 1.x the server has, or refused.
        E::either(b""),
    );
    add(
        "version-major",
        "HTTP/2.0 in an HTTP/1 request line",
        "GET {P} HTTP/2.0\r\nHost: {H}\r\n\r\n",
        E::refused(),
    );
    add(
        "no-host",
        "HTTP/1.1 without Host",
        "GET {P} HTTP/1.1\r\nX-No-Host: 1\r\n\r\n",
        E::refused(),
    );
    add(
        "two-hosts",
        "two different Host headers",
        "GET {P} HTTP/1.1\r\nHost: {H}\r\nHost: other.example.net\r\n\r\n",
        E::refused(),
    );
    add(
        "host-userinfo",
        "userinfo in Host",
        "GET {P} HTTP/1.1\r\nHost: user@{H}\r\n\r\n",
        E::refused(),
    );
    add(
        "method-invalid",
        "a method with a character no token has",
        "G@T {P} HTTP/1.1\r\nHost: {H}\r\n\r\n",
        E::refused(),
    );
    add(
        "connect",
        "CONNECT through the gateway",
        "CONNECT {H}:443 HTTP/1.1\r\nHost: {H}:443\r\n\r\n",
        E::refused(),
    );
    let big = "a".repeat(70 * 1024);
    add(
        "header-too-large",
        "a 70 KiB header value",
        &format!("GET {{P}} HTTP/1.1\r\nHost: {{H}}\r\nX-Big: {big}\r\n\r\n"),
        E::refused(),
    );
    add(
        "line-too-long",
        "a 70 KiB request target",
        &format!("GET {{P}}/{big} HTTP/1.1\r\nHost: {{H}}\r\n\r\n"),
        E::refused(),
    );
    let many: String = (0..120).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    add(
        "too-many-headers",
        "120 header lines",
        &format!("GET {{P}} HTTP/1.1\r\nHost: {{H}}\r\n{many}\r\n"),
        E::refused(),
    );
    add(
        "pipelined",
        "two requests in one write",
        "GET {P}/1 HTTP/1.1\r\nHost: {H}\r\n\r\nGET {P}/2 HTTP/1.1\r\nHost: {H}\r\n\r\n",
        Expect {
            may_refuse: false,
            serve: Some(b""),
            max_forwarded: 2,
            max_answers: 2,
        },
    );
    if let Some(trickle) = trickle {
        const EVERY: Duration = Duration::from_millis(250);
        let prefix = format!("/case-{:02}", out.len());
        let head = format!("GET {prefix} HTTP/1.1\r\nHost: {host}\r\n");
        let mut steps = vec![Step::Send(head.into_bytes())];
        for i in 0..(trickle.as_millis() / EVERY.as_millis()).max(1) {
            steps.push(Step::Pause(EVERY));
            steps.push(Step::Send(format!("X-Slow-{i}: 1\r\n").into_bytes()));
        }
        steps.push(Step::Send(b"\r\n".to_vec()));
        out.push(Case {
            name: "slowloris",
            what: "a head trickled a header line every 250 ms",
            prefix,
            steps,
            expect: Expect::refused(),
        });
    }
    out
}

/// What a proxy did with a case.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Statuses of the answers, in order (interim 1xx left out).
    pub statuses: Vec<u16>,
    /// Bytes that were not an HTTP/1.x answer (an HTTP/0.9 reply, say).
    pub garbage: bool,
    /// The proxy closed the connection.
    pub closed: bool,
    /// Requests the backend received for the case.
    pub forwarded: Vec<Seen>,
}

impl Outcome {
    /// As a table cell: `400`, `200 200`, `closed`, `400 (1 forwarded)`.
    pub fn cell(&self) -> String {
        let mut parts: Vec<String> = self.statuses.iter().map(|s| s.to_string()).collect();
        if self.garbage {
            parts.push("non-HTTP reply".into());
        }
        if parts.is_empty() {
            parts.push(if self.closed { "closed" } else { "no answer" }.into());
        }
        let mut cell = parts.join(" ");
        let served = self.statuses.iter().filter(|s| **s / 100 == 2).count();
        if self.forwarded.len() != served {
            cell += &format!(" ({} forwarded)", self.forwarded.len());
        }
        cell
    }
}

/// Send `case` to `proxy` on a new connection; collect the answers until the
/// proxy closes or has been quiet for a while.
pub async fn send(proxy: SocketAddr, case: &Case) -> std::io::Result<Outcome> {
    let mut s = tokio::net::TcpStream::connect(proxy).await?;
    let mut out = Outcome::default();
    let mut buf = Vec::new();
    for step in &case.steps {
        match step {
            Step::Send(bytes) => {
                if s.write_all(bytes).await.is_err() {
                    // The proxy gave up on us mid-send: read what it said.
                    break;
                }
            }
            Step::Pause(d) => {
                // Keep reading while paused: a proxy that closes ends the case.
                let until = Instant::now() + *d;
                if read_until(&mut s, &mut buf, until, &mut out).await {
                    break;
                }
            }
        }
    }
    // A case ends when the proxy closes, or is quiet after its answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let quiet = (Instant::now() + QUIET).min(deadline);
        let before = buf.len();
        if read_until(&mut s, &mut buf, quiet, &mut out).await {
            break;
        }
        if buf.len() == before || Instant::now() >= deadline {
            break;
        }
    }
    parse_answers(&buf, &mut out);
    Ok(out)
}

/// Read into `buf` until `until`; true once the connection is closed.
async fn read_until(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    until: Instant,
    out: &mut Outcome,
) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => {
                out.closed = true;
                return true;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Split `buf` into HTTP/1.x answers, framed by Content-Length or chunked.
fn parse_answers(mut buf: &[u8], out: &mut Outcome) {
    while !buf.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => {
                out.garbage = true;
                return;
            }
        };
        let status = resp.code.unwrap_or(0);
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        };
        let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
        let chunked = header("transfer-encoding").is_some_and(|v| v.ends_with("chunked"));
        buf = &buf[head..];
        if (100..200).contains(&status) {
            continue;
        }
        out.statuses.push(status);
        if chunked {
            match chunked_len(buf) {
                Some(n) => buf = &buf[n..],
                None => return,
            }
        } else if let Some(n) = length {
            buf = &buf[n.min(buf.len())..];
        } else {
            return; // the body runs to the close
        }
    }
}

/// Bytes of a whole chunked body at the start of `buf`.
fn chunked_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size = std::str::from_utf8(&buf[at..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then the blank line.
            let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
            return Some(end + 2);
        }
        at += size + 2;
        if at > buf.len() {
            return None;
        }
    }
}

/// Whether `outcome` is within what `case` allows; the reason if not.
pub fn verdict(case: &Case, outcome: &Outcome) -> Result<(), String> {
    let e = &case.expect;
    if outcome.garbage {
        return Err("sent bytes that are not an HTTP/1.x answer".into());
    }
    if let Some(s) = outcome
        .forwarded
        .iter()
        .find(|s| s.path.contains("smuggled"))
    {
        return Err(format!("the backend received a smuggled request: {s:?}"));
    }
    if outcome.forwarded.len() > e.max_forwarded {
        return Err(format!(
            "forwarded {} requests, at most {} allowed: {:?}",
            outcome.forwarded.len(),
            e.max_forwarded,
            outcome.forwarded
        ));
    }
    if outcome.statuses.len() > e.max_answers {
        return Err(format!("answered {} times", outcome.statuses.len()));
    }
    let first = outcome.statuses.first().copied().unwrap_or(0);
    match first {
        0 | 400.. if !e.may_refuse => {
            Err(format!("refused ({}) a request to serve", outcome.cell()))
        }
        0 | 400.. => match outcome.forwarded.iter().find(|s| s.complete) {
            Some(s) => Err(format!(
                "refused ({}) but forwarded whole: {s:?}",
                outcome.cell()
            )),
            None => Ok(()),
        },
        200..=299 => {
            let Some(body) = e.serve else {
                return Err(format!("served ({}) a request to refuse", outcome.cell()));
            };
            if outcome.forwarded.is_empty() {
                return Err("answered 2xx but forwarded nothing".into());
            }
            match outcome
                .forwarded
                .iter()
                .find(|s| !s.complete || s.body != body)
            {
                Some(s) => Err(format!(
                    "the backend got body {:?} (whole: {}), expected {:?}",
                    String::from_utf8_lossy(&s.body),
                    s.complete,
                    String::from_utf8_lossy(body)
                )),
                None => Ok(()),
            }
        }
        _ => Err(format!("answered {}", outcome.cell())),
    }
}

/// Send every case to `proxy` at once and wait for the backend to settle;
/// each outcome with the requests the recorder saw for it.
pub async fn run_all(proxy: SocketAddr, recorder: &Recorder, cases: &[Case]) -> Vec<Outcome> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, case) in cases.iter().enumerate() {
        let case = case.clone();
        tasks.spawn(async move {
            let outcome = send(proxy, &case).await.unwrap_or_else(|_| Outcome {
                closed: true,
                ..Outcome::default()
            });
            (i, outcome)
        });
    }
    let mut outcomes = vec![Outcome::default(); cases.len()];
    while let Some(Ok((i, outcome))) = tasks.join_next().await {
        outcomes[i] = outcome;
    }
    // A body the backend is still reading is recorded when it ends (or in 3 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (case, outcome) in cases.iter().zip(&mut outcomes) {
        outcome.forwarded = recorder.seen(&case.prefix);
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_split_by_their_framing() {
        let mut out = Outcome::default();
        parse_answers(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            &mut out,
        );
        assert_eq!(out.statuses, [200, 200, 400]);
        assert!(!out.garbage);
        let mut out = Outcome::default();
        parse_answers(b"ok\n", &mut out);
        assert!(out.garbage);
    }

    #[test]
    fn cases_have_distinct_prefixes_and_hosts_filled_in() {
        let cases = cases("web.example.com", Some(Duration::from_secs(1)));
        assert!(cases.len() >= 40, "{} cases", cases.len());
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(c.prefix, format!("/case-{i:02}"));
            let Step::Send(first) = &c.steps[0] else {
                panic!("{} starts with a pause", c.name)
            };
            let text = String::from_utf8_lossy(first);
            assert!(!text.contains("{H}") && !text.contains("{P}"), "{}", c.name);
        }
    }

    #[test]
    fn verdicts_catch_smuggling_wrong_status_and_cut_bodies() {
        let cases = cases("h", None);
        let cl_te = cases.iter().find(|c| c.name == "cl-te").unwrap();
        let seen = |path: &str, body: &[u8], complete| Seen {
            path: path.into(),
            body: body.to_vec(),
            complete,
        };
        let ok = Outcome {
            statuses: vec![200],
            closed: true,
            forwarded: vec![seen("/case-00", b"", true)],
            ..Outcome::default()
        };
        assert_eq!(verdict(cl_te, &ok), Ok(()));
        let smuggled = Outcome {
            forwarded: vec![
                seen("/case-00", b"", true),
                seen("/case-00-smuggled", b"", true),
            ],
            ..ok.clone()
        };
        assert!(verdict(cl_te, &smuggled).unwrap_err().contains("smuggled"));
        let cut = Outcome {
            forwarded: vec![seen("/case-00", b"", false)],
            ..ok.clone()
        };
        assert!(verdict(cl_te, &cut).is_err());
        let redirect = Outcome {
            statuses: vec![302],
            ..ok.clone()
        };
        assert!(verdict(cl_te, &redirect).is_err());
        let refused_but_whole = Outcome {
            statuses: vec![400],
            ..ok
        };
        assert!(verdict(cl_te, &refused_but_whole)
            .unwrap_err()
            .contains("forwarded whole"));
        let obs_fold = cases.iter().find(|c| c.name == "obs-fold").unwrap();
        let refused = Outcome {
            statuses: vec![400],
            closed: true,
            ..Outcome::default()
        };
        assert_eq!(verdict(obs_fold, &refused), Ok(()));
        let connect = cases.iter().find(|c| c.name == "connect").unwrap();
        let tunnel = Outcome {
            statuses: vec![200],
            ..Outcome::default()
        };
        assert!(verdict(connect, &tunnel).is_err());
    }
}
