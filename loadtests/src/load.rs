//! The load generator: a closed loop over a fixed number of keep-alive
//! HTTP/1.1 connections, one task each writing a request and parsing the
//! response with httparse; latency in an HDR histogram; every response body counted so the split can
//! be checked. Like wrk, it runs one single-threaded runtime per OS thread and
//! shares nothing between connections until the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use http::HeaderValue;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which Host header each request carries.
#[derive(Debug, Clone)]
pub enum Hosts {
    /// Always this one.
    One(HeaderValue),
    /// A uniformly random one per request.
    Random(Arc<Vec<HeaderValue>>),
}

impl Hosts {
    /// A single host.
    pub fn one(host: &str) -> Self {
        Hosts::One(HeaderValue::from_str(host).expect("host is a valid header value"))
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Connection `i` goes to `targets[i % targets.len()]`.
    pub targets: Vec<SocketAddr>,
    /// Host header per request.
    pub hosts: Hosts,
    /// Keep-alive connections, each with one request in flight.
    pub conns: usize,
    /// OS threads (each a current-thread runtime) sharing the connections.
    pub threads: usize,
    /// How long to send.
    pub duration: Duration,
    /// Keep `(time, body)` of every response, for scenarios that follow a change over time.
    pub timeline: bool,
}

/// One response on the timeline: when its request was sent and when it was
/// answered (microseconds since [`Outcome::started`]), and an index into [`Outcome::names`].
pub type Mark = (u64, u64, u16);

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// When the first connection was opened.
    pub started: Instant,
    /// From start until the last connection finished.
    pub elapsed: Duration,
    /// Responses with status 200.
    pub ok: u64,
    /// Failed requests: transport errors and non-200 answers.
    pub errors: u64,
    /// A few error messages, for the report.
    pub error_samples: Vec<String>,
    /// Latency of every successful request, in microseconds.
    pub latency: Histogram<u64>,
    /// Successful responses per body (the revision that answered).
    pub bodies: BTreeMap<String, u64>,
    /// Distinct bodies, indexed by [`Mark`].
    pub names: Vec<String>,
    /// Every successful response, in order of sending (only with `timeline`).
    pub timeline: Vec<Mark>,
}

impl Outcome {
    /// Nothing measured (for results taken from another tool).
    pub fn empty() -> Self {
        Outcome {
            started: Instant::now(),
            elapsed: Duration::ZERO,
            ok: 0,
            errors: 0,
            error_samples: Vec::new(),
            latency: histogram(),
            bodies: BTreeMap::new(),
            names: Vec::new(),
            timeline: Vec::new(),
        }
    }

    /// Add another run of the same load (another round of it): counts,
    /// latencies and bodies add up, and so does the measured time, so
    /// [`Self::rps`] is the rate over both. The timeline is not kept.
    pub fn absorb(&mut self, other: Outcome) {
        self.elapsed += other.elapsed;
        self.ok += other.ok;
        self.errors += other.errors;
        for s in other.error_samples {
            if self.error_samples.len() < 5 {
                self.error_samples.push(s);
            }
        }
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
        for (body, n) in other.bodies {
            *self.bodies.entry(body).or_insert(0) += n;
        }
        self.timeline.clear();
    }

    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// Share of each body in percent.
    pub fn split(&self) -> BTreeMap<String, f64> {
        let total: u64 = self.bodies.values().sum();
        self.bodies
            .iter()
            .map(|(k, v)| (k.clone(), 100.0 * *v as f64 / total.max(1) as f64))
            .collect()
    }
}

/// Per-connection tallies, merged at the end.
struct Tally {
    ok: u64,
    errors: u64,
    samples: Vec<String>,
    latency: Histogram<u64>,
    names: Vec<Bytes>,
    counts: Vec<u64>,
    timeline: Vec<Mark>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl Tally {
    fn new() -> Self {
        Tally {
            ok: 0,
            errors: 0,
            samples: Vec::new(),
            latency: histogram(),
            names: Vec::new(),
            counts: Vec::new(),
            timeline: Vec::new(),
        }
    }

    fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.samples.len() < 5 {
            self.samples.push(msg);
        }
    }

    fn body(&mut self, body: Bytes) -> u16 {
        // A handful of distinct bodies: a scan beats hashing.
        let i = match self.names.iter().position(|n| *n == body) {
            Some(i) => i,
            None => {
                self.names.push(body);
                self.counts.push(0);
                self.names.len() - 1
            }
        };
        self.counts[i] += 1;
        i as u16
    }
}

/// Run the load to completion (blocking) and merge what every connection saw.
pub fn run(spec: &Spec) -> Outcome {
    assert!(!spec.targets.is_empty() && spec.conns > 0 && spec.threads > 0);
    let threads = spec.threads.min(spec.conns);
    let started = Instant::now();
    let deadline = started + spec.duration;
    let tallies: Vec<(Tally, Instant)> = on_threads(threads, |t| {
        let spec = spec.clone();
        async move {
            let mut set = tokio::task::JoinSet::new();
            for c in (t..spec.conns).step_by(threads) {
                let target = spec.targets[c % spec.targets.len()];
                let hosts = spec.hosts.clone();
                let timeline = spec.timeline;
                set.spawn(connection(
                    target, hosts, started, deadline, timeline, c as u64,
                ));
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push((r.expect("connection task"), Instant::now()));
            }
            out
        }
    })
    .into_iter()
    .flat_map(|r| r.expect("load thread"))
    .collect();
    merge(started, tallies)
}

/// Run `work(t)` for `t` in `0..threads`, each on an OS thread of its own
/// with a single-threaded runtime (as wrk runs its threads); what each
/// returned, or its panic, in order.
pub fn on_threads<R, Fut>(
    threads: usize,
    work: impl Fn(usize) -> Fut + Sync,
) -> Vec<std::thread::Result<R>>
where
    Fut: std::future::Future<Output = R>,
    R: Send,
{
    std::thread::scope(|s| {
        let work = &work;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a tokio runtime")
                        .block_on(work(t))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    })
}

fn merge(started: Instant, tallies: Vec<(Tally, Instant)>) -> Outcome {
    let mut out = Outcome {
        started,
        ..Outcome::empty()
    };
    for (t, finished) in tallies {
        out.elapsed = out.elapsed.max(finished - started);
        out.ok += t.ok;
        out.errors += t.errors;
        for s in t.samples {
            if out.error_samples.len() < 5 {
                out.error_samples.push(s);
            }
        }
        out.latency.add(&t.latency).expect("same histogram bounds");
        let mut global = Vec::with_capacity(t.names.len());
        for (name, count) in t.names.iter().zip(&t.counts) {
            let name = String::from_utf8_lossy(name).trim().to_owned();
            *out.bodies.entry(name.clone()).or_insert(0) += count;
            let idx = match out.names.iter().position(|n| *n == name) {
                Some(i) => i,
                None => {
                    out.names.push(name);
                    out.names.len() - 1
                }
            };
            global.push(idx as u16);
        }
        out.timeline.extend(
            t.timeline
                .into_iter()
                .map(|(sent, done, i)| (sent, done, global[i as usize])),
        );
    }
    out.timeline.sort_unstable();
    out
}

/// One connection's closed loop; reconnects after an error until the deadline.
async fn connection(
    target: SocketAddr,
    hosts: Hosts,
    started: Instant,
    deadline: Instant,
    timeline: bool,
    seed: u64,
) -> Tally {
    let mut tally = Tally::new();
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut request = Vec::with_capacity(256);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    while Instant::now() < deadline {
        let mut stream = match TcpStream::connect(target).await {
            Ok(s) => s,
            Err(e) => {
                tally.error(format!("connect {target}: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        buf.clear();
        loop {
            let t0 = Instant::now();
            if t0 >= deadline {
                return tally;
            }
            let host = match &hosts {
                Hosts::One(h) => h,
                Hosts::Random(all) => &all[rng.random_range(0..all.len())],
            };
            encode_request(&mut request, host.as_bytes());
            let reply = match stream.write_all(&request).await {
                Ok(()) => read_response(&mut stream, &mut buf).await,
                Err(e) => Err(format!("writing: {e}")),
            };
            let (status, body, keep) = match reply {
                Ok(r) => r,
                Err(e) => {
                    tally.error(format!("{target}: {e}"));
                    break;
                }
            };
            let done = Instant::now();
            if status == 200 {
                tally.ok += 1;
                let _ = tally.latency.record((done - t0).as_micros().max(1) as u64);
                let i = tally.body(body);
                if timeline {
                    tally
                        .timeline
                        .push((micros(t0 - started), micros(done - started), i));
                }
            } else {
                let text = String::from_utf8_lossy(&body);
                tally.error(format!("{target}: {status}: {}", text.trim()));
            }
            if !keep {
                break;
            }
        }
    }
    tally
}

/// Read one response with a Content-Length body: status, body, keep-alive.
/// hyper's client connection measured 0.82x wrk's rate here (a driver task
/// and a channel per connection); one task parsing with httparse keeps the
/// generator ahead of wrk, so the proxy, not the generator, is the limit.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<(u16, Bytes, bool), String> {
    let (head, status, length, keep) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(head)) => {
                let (mut length, mut keep) = (None, true);
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        keep = !h.value.eq_ignore_ascii_case(b"close");
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err("chunked responses are not supported".into());
                    }
                }
                let length = length.ok_or("response without Content-Length")?;
                break (head, resp.code.unwrap_or(0), length, keep);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("bad response: {e}")),
        }
        read_more(
            stream,
            buf,
            "reading",
            "connection closed before a response",
        )
        .await?;
    };
    while buf.len() < head + length {
        read_more(stream, buf, "reading body", "connection closed in the body").await?;
    }
    let mut message = buf.split_to(head + length);
    Ok((status, message.split_off(head).freeze(), keep))
}

/// Append what the socket has to `buf`; an end of stream is the error `eof`.
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    what: &str,
    eof: &str,
) -> Result<(), String> {
    match stream.read_buf(buf).await {
        Ok(0) => Err(eof.into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// `GET /` for `host`, into `out` (cleared first).
fn encode_request(out: &mut Vec<u8>, host: &[u8]) {
    out.clear();
    out.extend_from_slice(b"GET / HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n\r\n");
}

/// One request on a new connection, for readiness checks: status and body.
/// The same client as the load, so a proxy is ready when the load can use it.
pub async fn get(target: SocketAddr, host: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let mut request = Vec::new();
    encode_request(&mut request, host.as_bytes());
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("{target}: writing: {e}"))?;
    let (status, body, _) = read_response(&mut stream, &mut BytesMut::new())
        .await
        .map_err(|e| format!("{target}: {e}"))?;
    Ok((status, String::from_utf8_lossy(&body).trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ok: u64, errors: u64, secs: u64, latency_us: u64, body: &str) -> Outcome {
        let mut out = Outcome::empty();
        out.ok = ok;
        out.errors = errors;
        out.elapsed = Duration::from_secs(secs);
        for _ in 0..ok {
            out.latency.record(latency_us).unwrap();
        }
        out.bodies.insert(body.into(), ok);
        out
    }

    #[test]
    fn absorbed_rounds_give_the_rate_and_latencies_over_all_of_them() {
        let mut total = outcome(1000, 1, 1, 100, "a");
        total.absorb(outcome(3000, 2, 1, 900, "b"));
        assert_eq!((total.ok, total.errors), (4000, 3));
        assert_eq!(total.elapsed, Duration::from_secs(2));
        assert_eq!(total.rps(), 2000.0);
        assert_eq!(total.latency.len(), 4000);
        assert!(
            total.ms(0.2) < 0.2 && total.ms(0.9) > 0.8,
            "both rounds' latencies"
        );
        assert_eq!(total.split()["a"], 25.0);
        assert_eq!(total.split()["b"], 75.0);
    }
}
