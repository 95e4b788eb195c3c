//! External authorization, as Envoy's `ext_authz` filter does it for
//! Kourier: before a request is forwarded, an authorization server is asked
//! (gRPC `envoy.service.auth.v3.Authorization/Check`, or a plain HTTP
//! request), and either the request goes on, with the headers the server
//! asks for, or the server's answer goes back to the client and the backend
//! never sees the request.
//!
//! A slow or absent server never holds other requests: checks in flight are
//! bounded (`--extauthz-max-in-flight`), each gets `--extauthz-timeout`,
//! and past either the failure mode decides (`--extauthz-failure-mode-allow`).

mod grpc;
mod http_check;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use prometheus::{Histogram, IntCounterVec};
use tokio::sync::Semaphore;

/// How the authorization server is spoken to (Kourier's `extauthz-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// gRPC over h2c: `envoy.service.auth.v3.Authorization/Check`.
    Grpc,
    /// A plain HTTP/1.1 request.
    Http,
    /// A plain HTTP/1.1 request over TLS, the server's certificate checked
    /// against `--extauthz-ca-file` or the system's roots.
    Https,
}

/// The authorization server and how to use it.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOST:PORT` of the server.
    pub target: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// On an error, a timeout or too many checks in flight: let the request
    /// through (true) or answer 403 (false).
    pub failure_mode_allow: bool,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// HTTP modes: put before the request's path.
    pub path_prefix: String,
    /// Checks in flight at once; past it, the failure mode applies.
    pub max_in_flight: usize,
    /// Who asks: the `client` context extension (gRPC) or header (HTTP).
    pub client_name: String,
    /// Send up to this many bytes of the request body with the check (what
    /// came first, when it is longer); 0 sends none and waits for none.
    pub max_request_body_bytes: usize,
    /// gRPC mode: the body as bytes (`raw_body`) instead of text (`body`).
    pub pack_as_bytes: bool,
    /// HTTPS mode: a PEM file of the CAs the server's certificate must
    /// chain to; without it, the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// What is asked about one request.
#[derive(Debug)]
pub struct Check<'a> {
    /// Request method.
    pub method: &'a str,
    /// `http` or `https`, as the client came in.
    pub scheme: &'static str,
    /// The Host (authority) as sent.
    pub host: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The client (behind `--trusted-hops` proxies, the one they name).
    pub client: Option<IpAddr>,
    /// `ExternalIP` or `ClusterLocal`: where the route is reachable from.
    pub visibility: &'static str,
    /// The labels of the KIngress routing the request, sent as context
    /// extensions as Kourier sends them.
    pub labels: &'a dataplane::table::Labels,
    /// What was read of the body, when the server is to see it.
    pub body: Option<&'a Body>,
}

/// The start of a request body, read for the server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Body {
    /// At most `--extauthz-max-request-body-bytes` bytes.
    pub bytes: Bytes,
    /// More followed that the server does not see
    /// (`x-envoy-auth-partial-body: true`).
    pub partial: bool,
}

impl Body {
    /// The header Envoy adds to a check that carries a body.
    pub const PARTIAL_HEADER: HeaderName = HeaderName::from_static("x-envoy-auth-partial-body");

    /// The value of [`Self::PARTIAL_HEADER`].
    pub fn partial_value(&self) -> HeaderValue {
        HeaderValue::from_static(if self.partial { "true" } else { "false" })
    }
}

/// The server's answer, or the failure mode's.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Forward, with these changes to the request.
    Allow(Mutations),
    /// Answer the client with this; the backend never sees the request.
    Deny(Denial),
}

/// Header changes an allowing server asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mutations {
    /// Replace every value of the header.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Add a value beside those there.
    pub append: Vec<(HeaderName, HeaderValue)>,
    /// Remove the header.
    pub remove: Vec<HeaderName>,
}

impl Mutations {
    /// Apply to the request going upstream.
    pub fn apply(&self, req: &mut RequestHeader) {
        for name in &self.remove {
            req.remove_header(name);
        }
        for (name, value) in &self.set {
            req.insert_typed_header(name.clone(), value.clone());
        }
        for (name, value) in &self.append {
            // A name and value that parsed already: appending cannot fail.
            let _ = req.append_header(name.clone(), value.clone());
        }
    }
}

/// What a denied request gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    /// Status code.
    pub status: u16,
    /// Headers of the answer.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Its body.
    pub body: Bytes,
}

impl Denial {
    /// A bare 403, the failure mode's answer (Envoy's `status_on_error`).
    pub fn forbidden() -> Self {
        Denial {
            status: 403,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
}

/// Why a check has no answer from the server.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// More checks in flight than allowed.
    #[error("{0} checks already in flight")]
    Busy(usize),
    /// The server took longer than the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server could not be reached, or answered something unusable.
    #[error("{0}")]
    Failed(String),
    /// The server said it failed, with an answer for the client.
    #[error("the server reported an error")]
    ServerError(Denial),
}

/// How a check ended, for metrics and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server allowed it.
    Allowed,
    /// The server denied it.
    Denied,
    /// No usable answer: the failure mode decided.
    Error,
}

impl Outcome {
    /// The metric label and access-log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// One of the two ways to ask.
enum Client {
    // Boxed: the endpoint's settings are large, the HTTP client has none.
    Grpc(Box<grpc::GrpcClient>),
    Http(http_check::HttpClient),
}

/// Asks the authorization server about requests.
pub struct Authorizer {
    config: Config,
    client: Client,
    in_flight: Semaphore,
    checks: IntCounterVec,
    duration: Histogram,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("config", &self.config)
            .finish()
    }
}

impl Authorizer {
    /// An authorizer for `config`, counting in `registry`. Connects lazily:
    /// a server down at start is an error per check, not a failed start.
    pub fn new(config: Config, registry: &prometheus::Registry) -> anyhow::Result<Arc<Self>> {
        if config.pack_as_bytes && config.protocol != Protocol::Grpc {
            // As Kourier: the HTTP modes send the body as the body.
            anyhow::bail!("--extauthz-pack-as-bytes applies to --extauthz-protocol grpc only");
        }
        let client = match config.protocol {
            Protocol::Grpc => Client::Grpc(Box::new(grpc::GrpcClient::new(&config.target)?)),
            Protocol::Http | Protocol::Https => Client::Http(http_check::HttpClient::new(&config)?),
        };
        let checks = IntCounterVec::new(
            prometheus::Opts::new(
                "gateway_authz_checks_total",
                "External authorization checks by outcome (allowed, denied, error).",
            ),
            &["outcome"],
        )?;
        let duration = Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "gateway_authz_duration_seconds",
                "Time an external authorization check took, errors included.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        registry.register(Box::new(checks.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        for outcome in ["allowed", "denied", "error"] {
            checks.with_label_values(&[outcome]);
        }
        Ok(Arc::new(Authorizer {
            in_flight: Semaphore::new(config.max_in_flight),
            config,
            client,
            checks,
            duration,
        }))
    }

    /// How much of a request body the server is to see (0: none).
    pub fn body_limit(&self) -> usize {
        self.config.max_request_body_bytes
    }

    /// How long the start of a body is waited for (the check's timeout):
    /// past it, the check goes with what came, marked partial.
    pub fn body_wait(&self) -> Duration {
        self.config.timeout
    }

    /// Whether a request with these headers is to be checked with its body:
    /// not a gRPC call, whose stream may send one message and wait for an
    /// answer (a check waiting for more would hold it).
    pub fn wants_body(&self, headers: &HeaderMap) -> bool {
        self.config.max_request_body_bytes > 0
            && !headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    }

    /// Ask about `check`: the server's decision, or the failure mode's.
    pub async fn check(&self, check: &Check<'_>) -> (Decision, Outcome) {
        let start = Instant::now();
        let answer = self.ask(check).await;
        self.duration.observe(start.elapsed().as_secs_f64());
        let (decision, outcome) = match answer {
            Ok(Decision::Allow(m)) => (Decision::Allow(m), Outcome::Allowed),
            Ok(Decision::Deny(d)) => (Decision::Deny(d), Outcome::Denied),
            Err(e) => {
                tracing::warn!(host = check.host, path = check.path, server = %self.config.target,
                    "external authorization failed: {e}");
                let decision = match e {
                    _ if self.config.failure_mode_allow => Decision::Allow(Mutations::default()),
                    CheckError::ServerError(denial) => Decision::Deny(denial),
                    _ => Decision::Deny(Denial::forbidden()),
                };
                (decision, Outcome::Error)
            }
        };
        self.checks.with_label_values(&[outcome.as_str()]).inc();
        (decision, outcome)
    }

    async fn ask(&self, check: &Check<'_>) -> Result<Decision, CheckError> {
        // Never queue behind a slow server: a check that finds no permit
        // fails at once, and the failure mode answers.
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| CheckError::Busy(self.config.max_in_flight))?;
        let timeout = self.config.timeout;
        let asked = async {
            match &self.client {
                Client::Grpc(c) => c.check(&self.config, check).await,
                Client::Http(c) => c.check(&self.config, check).await,
            }
        };
        tokio::time::timeout(timeout, asked)
            .await
            .map_err(|_| CheckError::Timeout(timeout))?
    }
}

/// This worker thread's client in `slot`, made by `make` on first use: a
/// client's connections are driven by the runtime of the thread that made
/// it, and one shared across threads would wake one from another.
fn per_thread<T: Clone + 'static>(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Option<T>>>,
    make: impl FnOnce() -> T,
) -> T {
    slot.with_borrow_mut(|client| client.get_or_insert_with(make).clone())
}

/// Headers never passed between the client, the server and the backend:
/// the connection-only ones every relay drops (`wire`'s list), and those
/// each hop sets for itself (the framing and `Host`).
fn hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    wire::response_head::HOP_BY_HOP.contains(&name)
        || matches!(
            name,
            "trailer" | "transfer-encoding" | "content-length" | "host"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_remove_then_set_then_append() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-user", "forged").unwrap();
        req.insert_header("x-drop", "1").unwrap();
        req.insert_header("x-tag", "a").unwrap();
        let m = Mutations {
            set: vec![(
                HeaderName::from_static("x-user"),
                HeaderValue::from_static("alice"),
            )],
            append: vec![(
                HeaderName::from_static("x-tag"),
                HeaderValue::from_static("b"),
            )],
            remove: vec![HeaderName::from_static("x-drop")],
        };
        m.apply(&mut req);
        let headers = &req.headers;
        assert_eq!(headers["x-user"], "alice");
        assert!(headers.get("x-drop").is_none());
        let tags: Vec<_> = headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
    }
}
