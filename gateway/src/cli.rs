//! Command line: `gateway serve` and `gateway demo`. Every flag can also be
//! set through the environment variable shown in `--help` (`GATEWAY_*`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use config_sync::sources::kube::{KubeOptions, SourceKind};

use crate::exchange::ProxyOptions;
use crate::server::ServeConfig;

/// A pingora ingress gateway for Knative Serving.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `gateway=debug,pingora=warn`.
    #[arg(long, env = "GATEWAY_LOG", default_value = "info", global = true)]
    pub log: String,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve routes from a snapshot file (`--file`, reloaded on change) or a
    /// Kubernetes API server (`--kube`, watched).
    Serve(Box<ServeArgs>),
    /// Run a self-contained demo on loopback: sample revisions, a 90/10 split with tags,
    /// and a scaled-to-zero revision woken by a local activator stand-in.
    Demo(Box<DemoArgs>),
}

/// `gateway serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Snapshot file: multi-document YAML (or a `kind: List`) of Routes and EndpointSlices
    /// as `kubectl get -o yaml` prints them. Watched; every change is swapped in.
    #[arg(
        long,
        env = "GATEWAY_FILE",
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    pub file: Option<PathBuf>,
    /// Watch a Kubernetes API server instead of a file (in-cluster config, or
    /// the kubeconfig of `--kubeconfig`).
    #[arg(long, env = "GATEWAY_KUBE")]
    pub kube: bool,
    /// With `--kube`, what the table is built from: `kingress` (the KIngresses
    /// of `--ingress-class`, their Services and EndpointSlices: Knative's
    /// ingress contract; the default) or `routes` (Route status and revision
    /// EndpointSlices).
    #[arg(long, env = "GATEWAY_SOURCE", value_enum)]
    pub source: Option<Source>,
    /// Kubeconfig file for `--kube` (default: in-cluster config, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace to watch with `--kube`; repeat for several. Default: every namespace.
    #[arg(
        long = "namespace",
        env = "GATEWAY_NAMESPACES",
        value_delimiter = ',',
        requires = "kube"
    )]
    pub namespaces: Vec<String>,
    /// Longest wait between retries while the API server is unreachable (e.g.
    /// 10s; default 5s); each wait gets up to as much again in jitter. The
    /// last table keeps serving meanwhile; this bounds how stale it stays once
    /// the API server is back.
    #[arg(long, env = "GATEWAY_KUBE_MAX_BACKOFF", value_parser = humantime::parse_duration)]
    pub kube_max_backoff: Option<Duration>,
    /// External proxy listener: public routes only (cluster-local ones get
    /// 404). Repeat (or separate with commas) for several addresses, e.g.
    /// `0.0.0.0:8080` and `[::]:8080` for both families; `[::]:8080` alone
    /// takes both where the system allows it.
    #[arg(
        long,
        env = "GATEWAY_HTTP",
        default_value = "0.0.0.0:8080",
        value_delimiter = ','
    )]
    pub http: Vec<String>,
    /// Internal proxy listener: every route, including cluster-local ones and
    /// the `x.ns.svc` names. Repeatable, as `--http`.
    #[arg(
        long,
        env = "GATEWAY_INTERNAL_HTTP",
        default_value = "0.0.0.0:8081",
        value_delimiter = ','
    )]
    pub internal_http: Vec<String>,
    /// Admin listener address (/metrics, /healthz, /readyz, /debug/routes).
    #[arg(long, env = "GATEWAY_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// External HTTPS listener (HTTP/1.1 and h2 by ALPN), or `off`.
    /// Repeatable, as `--http`.
    #[arg(
        long,
        env = "GATEWAY_HTTPS",
        default_value = "0.0.0.0:8443",
        value_delimiter = ','
    )]
    pub https: Vec<String>,
    /// Internal HTTPS listener, or `off`. Repeatable, as `--http`.
    #[arg(
        long,
        env = "GATEWAY_INTERNAL_HTTPS",
        default_value = "0.0.0.0:8444",
        value_delimiter = ','
    )]
    pub internal_https: Vec<String>,
    /// Secret (NAMESPACE/NAME, type kubernetes.io/tls) with the certificate for
    /// names no KIngress has one for. Watched like the KIngresses' Secrets.
    #[arg(long, env = "GATEWAY_DEFAULT_CERTIFICATE", value_parser = parse_key,
          conflicts_with = "default_certificate_file")]
    pub default_certificate: Option<config_sync::ObjectKey>,
    /// Secret (NAMESPACE/NAME, type kubernetes.io/tls) with the certificate
    /// the internal HTTPS listener presents for cluster-local names no
    /// KIngress has one for (Knative's `cluster-local-domain-tls`). Never
    /// presented on the external listener.
    #[arg(long, env = "GATEWAY_CLUSTER_CERT_SECRET", value_parser = parse_key)]
    pub cluster_cert_secret: Option<config_sync::ObjectKey>,
    /// Knative's system namespace: where the trust bundle for backends
    /// reached over TLS lives (Secret `routing-serving-certs`, key `ca.crt`,
    /// and ConfigMaps labelled `networking.knative.dev/trust-bundle`).
    #[arg(long, env = "GATEWAY_SYSTEM_NAMESPACE", default_value = config_sync::trust::DEFAULT_SYSTEM_NAMESPACE)]
    pub system_namespace: String,
    /// With `--kube`, watch only the certificate Secrets that also match this
    /// label selector, e.g. `networking.internal.knative.dev/certificate-uid`
    /// (on every certificate Knative makes, as Kourier's
    /// `ENABLE_SECRET_INFORMER_FILTERING_BY_CERT_UID` selects them): other
    /// Secrets never reach the gateway. The `--default-certificate` and
    /// `--cluster-cert-secret` Secrets must match it too.
    #[arg(long, env = "GATEWAY_SECRET_LABEL_SELECTOR", requires = "kube")]
    pub secret_label_selector: Option<String>,
    /// Speak TLS 1.3 to the activator (Knative's `system-internal-tls`;
    /// point `--activator` at its port 8112): its certificate must chain to
    /// the trust bundle and name `kn-routing`. Without a trust bundle,
    /// requests for revisions at zero get 502; none goes in plaintext.
    #[arg(long, env = "GATEWAY_ACTIVATOR_TLS")]
    pub activator_tls: bool,
    /// The activator's HTTP/2 cleartext port, on the host of `--activator`:
    /// where requests for a revision at zero whose port speaks HTTP/2 (gRPC)
    /// go (`--source routes`).
    #[arg(long, env = "GATEWAY_ACTIVATOR_H2_PORT", default_value_t = crate::activator::DEFAULT_H2_PORT)]
    pub activator_h2_port: u16,
    /// Knative activator, HOST:PORT: where requests for revisions without ready endpoints go.
    #[arg(long, env = "GATEWAY_ACTIVATOR", default_value = "activator-service.knative-serving.svc.cluster.local:80",
          value_parser = crate::activator::parse_target)]
    pub activator: String,
    /// KIngress class this gateway implements with `--kube` (the value of
    /// `ingress-class` in Knative's config-network). KIngresses of other classes
    /// are never touched.
    #[arg(long, env = "GATEWAY_INGRESS_CLASS", default_value = config_sync::model::kingress::DEFAULT_CLASS)]
    pub ingress_class: String,
    /// The namespace the gateway runs in (the downward API's
    /// `metadata.namespace`): where `--lease`, `--public-service` and
    /// `--private-service` are by default.
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub pod_namespace: String,
    /// Lease (NAMESPACE/NAME) electing the one replica that writes KIngress
    /// status; default `<pod namespace>/knative-gateway`.
    #[arg(long, env = "GATEWAY_LEASE", value_parser = parse_key)]
    pub lease: Option<config_sync::ObjectKey>,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value_t = default_identity())]
    pub identity: String,
    /// The gateway's external Service (NAMESPACE/NAME), written to KIngress
    /// `status.publicLoadBalancer`; default `<pod namespace>/knative-gateway`.
    #[arg(long, env = "GATEWAY_PUBLIC_SERVICE", value_parser = parse_key)]
    pub public_service: Option<config_sync::ObjectKey>,
    /// The gateway's internal Service (NAMESPACE/NAME), written to
    /// `status.privateLoadBalancer`; the leader probes its ready endpoints (every
    /// replica) before marking a KIngress Ready. Default
    /// `<pod namespace>/knative-gateway-internal`.
    #[arg(long, env = "GATEWAY_PRIVATE_SERVICE", value_parser = parse_key)]
    pub private_service: Option<config_sync::ObjectKey>,
    /// Kubernetes cluster domain, for the `x.ns.svc.<domain>` host names.
    #[arg(long, env = "GATEWAY_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// KIngress status writes a second, as client-go's `--kube-api-qps`
    /// (0: no limit). At the default a first install of 10,000 KIngresses
    /// takes about 200 s to turn all Ready; changes made meanwhile go first.
    #[arg(long, env = "GATEWAY_KUBE_API_QPS", default_value_t = 50.0)]
    pub kube_api_qps: f64,
    /// KIngress status writes at once before `--kube-api-qps` applies.
    #[arg(long, env = "GATEWAY_KUBE_API_BURST", default_value_t = 100)]
    pub kube_api_burst: u32,
    /// Knative probes (of a host, on a replica) the status writer keeps in
    /// flight at most.
    #[arg(long, env = "GATEWAY_PROBE_CONCURRENCY", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub probe_concurrency: u32,
    /// Take over the listening sockets of a running gateway instead of
    /// binding them: start this process, then send SIGQUIT to the old one
    /// (within 5 s either way). No connection is refused on the way.
    #[arg(long, env = "GATEWAY_UPGRADE")]
    pub upgrade: bool,
    /// Unix socket the listening sockets are handed over through: where a
    /// process started with --upgrade waits, and where one sent SIGQUIT
    /// delivers. Both must name the same path.
    #[arg(long, env = "GATEWAY_UPGRADE_SOCKET", default_value = DEFAULT_UPGRADE_SOCKET)]
    pub upgrade_socket: PathBuf,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// Where listening sockets are handed over on SIGQUIT, unless `--upgrade-socket` says.
pub const DEFAULT_UPGRADE_SOCKET: &str = "/tmp/knative-gateway-upgrade.sock";

/// What `--kube` builds the table from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// KIngresses of the class, Services and EndpointSlices.
    Kingress,
    /// Route status and revision EndpointSlices.
    Routes,
}

/// `NAMESPACE/NAME`.
fn parse_key(s: &str) -> Result<config_sync::ObjectKey, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(config_sync::ObjectKey::new(ns, name))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

/// Host name and process id: unique enough outside Kubernetes, where POD_NAME is unset.
fn default_identity() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "gateway".into());
    format!("{}-{}", host.trim(), std::process::id())
}

/// The namespace deploy/ installs into, and the default without `POD_NAMESPACE`.
pub const DEFAULT_NAMESPACE: &str = "knative-gateway";

impl ServeArgs {
    /// `--lease`, or `knative-gateway` in the pod's namespace.
    pub fn lease(&self) -> config_sync::ObjectKey {
        self.in_pod_namespace(&self.lease, "knative-gateway")
    }

    /// `--public-service`, or `knative-gateway` in the pod's namespace.
    pub fn public_service(&self) -> config_sync::ObjectKey {
        self.in_pod_namespace(&self.public_service, "knative-gateway")
    }

    /// `--private-service`, or `knative-gateway-internal` in the pod's namespace.
    pub fn private_service(&self) -> config_sync::ObjectKey {
        self.in_pod_namespace(&self.private_service, "knative-gateway-internal")
    }

    fn in_pod_namespace(
        &self,
        given: &Option<config_sync::ObjectKey>,
        name: &str,
    ) -> config_sync::ObjectKey {
        given
            .clone()
            .unwrap_or_else(|| config_sync::ObjectKey::new(&self.pod_namespace, name))
    }

    /// What the kube source watches and how it retries.
    pub fn kube_options(&self) -> KubeOptions {
        let defaults = KubeOptions::default();
        KubeOptions {
            source: match self.source.unwrap_or(Source::Kingress) {
                Source::Kingress => SourceKind::KIngress,
                Source::Routes => SourceKind::Routes,
            },
            namespaces: self.namespaces.clone(),
            ingress_class: Some(self.ingress_class.clone()),
            max_backoff: self.kube_max_backoff.unwrap_or(defaults.max_backoff),
            system_namespace: self.system_namespace.clone(),
            secret_labels: self.secret_label_selector.clone(),
            // Only the authorization server reads them.
            kingress_labels: self.tuning.extauthz_host.is_some(),
            ..defaults
        }
    }

    /// Checks clap cannot express (a `KUBECONFIG` in the environment is fine with `--file`).
    pub fn validate(&self) -> Result<(), String> {
        if !self.kube && !self.namespaces.is_empty() {
            return Err("--namespace only applies with --kube".into());
        }
        if !self.kube && self.kube_max_backoff.is_some() {
            return Err("--kube-max-backoff only applies with --kube".into());
        }
        if !self.kube && self.source.is_some() {
            return Err(
                "--source only applies with --kube (a --file snapshot may hold Routes and KIngresses)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `gateway demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// External proxy listener address.
    #[arg(long, env = "GATEWAY_HTTP", default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Internal proxy listener address (cluster-local routes and names).
    #[arg(long, env = "GATEWAY_INTERNAL_HTTP", default_value = "127.0.0.1:8081")]
    pub internal_http: String,
    /// Admin listener address.
    #[arg(long, env = "GATEWAY_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// External HTTPS listener (a self-signed demo certificate), or `off`.
    #[arg(long, env = "GATEWAY_HTTPS", default_value = "127.0.0.1:8443")]
    pub https: String,
    /// Internal HTTPS listener, or `off`.
    #[arg(long, env = "GATEWAY_INTERNAL_HTTPS", default_value = "127.0.0.1:8444")]
    pub internal_https: String,
    /// The sample revisions' MESSAGE, as in Knative's helloworld sample.
    #[arg(long, env = "GATEWAY_DEMO_MESSAGE", default_value = "Hello World!")]
    pub message: String,
    /// A woken revision scales back to zero after this long without requests (e.g. 30s, 500ms).
    #[arg(long, env = "GATEWAY_DEMO_SCALE_TO_ZERO_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub scale_to_zero_after: Duration,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// Proxy and process tuning shared by both subcommands.
#[derive(Debug, Args)]
pub struct Tuning {
    /// Probes and scraping listener: `/metrics`, `/healthz` and `/readyz`
    /// only (the table and `/ui` stay on `--admin`), or `off`. Give kubelets
    /// and Prometheus this one and keep `--admin` on loopback.
    #[arg(long, env = "GATEWAY_PROBES", default_value = "off")]
    pub probes: String,
    /// Proxy worker threads; 0 means one per core.
    #[arg(long, env = "GATEWAY_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// How long `/readyz` waits, after the first table, for the activator's
    /// name and the table's ExternalNames to resolve; past it the gateway is
    /// ready and `/readyz` names what is still unresolved.
    #[arg(long, env = "GATEWAY_RESOLVE_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub resolve_wait: Duration,
    /// Upstream connect timeout (e.g. 1s, 250ms).
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Endpoints of a revision tried per request when connections are refused.
    #[arg(long, env = "GATEWAY_MAX_CONNECT_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    pub max_connect_attempts: u16,
    /// Connections to an endpoint refused or reset in a row that eject it
    /// (never the last endpoint of a revision left); 0: never eject.
    #[arg(long, env = "GATEWAY_EJECT_AFTER", default_value_t = 5)]
    pub eject_after: u32,
    /// How long an ejected endpoint is left out; doubled for each ejection
    /// with no success between, up to 32 times (e.g. 10s, 500ms).
    #[arg(long, env = "GATEWAY_EJECT_FOR", default_value = "10s", value_parser = humantime::parse_duration)]
    pub eject_for: Duration,
    /// A pod that becomes ready beside others of its revision gets a share
    /// that ramps up from 10% over this long (e.g. 30s); off by default. A
    /// revision waking from zero is never held back.
    #[arg(long, env = "GATEWAY_SLOW_START", default_value = "0s", value_parser = humantime::parse_duration)]
    pub slow_start: Duration,
    /// Idle upstream connections each worker thread keeps for reuse, across
    /// all pods. Below the number of concurrent client connections, every
    /// request past it pays a new TCP connect (pingora's default is 128).
    #[arg(long, env = "GATEWAY_UPSTREAM_IDLE_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub upstream_idle_connections: u32,
    /// After SIGTERM, keep serving this long so load balancers stop sending first.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Then let in-flight requests finish for at most this long.
    #[arg(long, env = "GATEWAY_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Close a request body, WebSocket or gRPC stream silent this long in
    /// either direction (e.g. 1h). Off by default: streams stay open.
    #[arg(long, env = "GATEWAY_STREAM_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub stream_idle_timeout: Option<Duration>,
    /// PEM certificate chain for names nothing else has a certificate for
    /// (without Kubernetes; with it, see --default-certificate).
    #[arg(
        long,
        env = "GATEWAY_DEFAULT_CERTIFICATE_FILE",
        requires = "default_key_file"
    )]
    pub default_certificate_file: Option<PathBuf>,
    /// PEM private key of --default-certificate-file.
    #[arg(
        long,
        env = "GATEWAY_DEFAULT_KEY_FILE",
        requires = "default_certificate_file"
    )]
    pub default_key_file: Option<PathBuf>,
    /// Concurrent streams per HTTP/2 connection to a backend.
    #[arg(long, env = "GATEWAY_UPSTREAM_H2_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub upstream_h2_streams: u32,
    /// Client connections served at once on the proxy listeners; past it a
    /// new connection is closed on accept. 0: half the open-file limit
    /// (raised to its hard maximum at start), less a reserve.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Largest HTTP/1.x request head (request line and headers) in bytes;
    /// larger gets 431. HTTP/2 header lists have the same limit.
    #[arg(long, env = "GATEWAY_MAX_REQUEST_HEADER_BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1024..=16 * 1024 * 1024))]
    pub max_request_header_bytes: u32,
    /// Most header lines in a request (HTTP/1.x lines, HTTP/2 fields); more gets 431.
    #[arg(long, env = "GATEWAY_MAX_REQUEST_HEADERS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(8..=4096))]
    pub max_request_headers: u32,
    /// Time a client has to send a whole HTTP/1.x request head, from its
    /// first byte (on a new connection, from the accept); a slower one gets
    /// 408 and is closed, so trickled headers cannot hold connections. A TLS
    /// handshake (and a PROXY header) has as long.
    #[arg(long, env = "GATEWAY_REQUEST_HEADER_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub request_header_timeout: Duration,
    /// Access log, one JSON line per request: off, stdout, stderr or a file
    /// path (appended to). Lines are queued, never waited for; dropped ones
    /// are counted in gateway_access_log_dropped_total.
    #[arg(long, env = "GATEWAY_ACCESS_LOG", default_value = "off",
          value_parser = crate::access_log::parse_target)]
    pub access_log: crate::access_log::Target,
    /// Expect a PROXY protocol header (v1 or v2) at the start of every
    /// connection to the external listeners (--http, --https), and take the
    /// client's address from it. The internal listeners never expect one.
    #[arg(long, env = "GATEWAY_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
    /// External authorization server, `HOST:PORT` (Kourier's
    /// `extauthz-host`): every request is checked with it before it is
    /// forwarded, but for Knative's probes, ACME HTTP-01 paths and objects
    /// annotated `knative-gateway.dev/ext-authz: disabled`. Off by default.
    #[arg(long, env = "GATEWAY_EXTAUTHZ_HOST")]
    pub extauthz_host: Option<String>,
    /// How to speak to it: `grpc` (Envoy's `Authorization/Check` over h2c),
    /// `http`, or `https` (HTTP over TLS).
    #[arg(
        long,
        env = "GATEWAY_EXTAUTHZ_PROTOCOL",
        value_enum,
        default_value = "grpc"
    )]
    pub extauthz_protocol: crate::authz::Protocol,
    /// On an error, a timeout or too many checks in flight, let the
    /// request through instead of answering 403.
    #[arg(long, env = "GATEWAY_EXTAUTHZ_FAILURE_MODE_ALLOW")]
    pub extauthz_failure_mode_allow: bool,
    /// Time one check may take (Kourier's default: 2000 ms).
    #[arg(long, env = "GATEWAY_EXTAUTHZ_TIMEOUT", default_value = "2s",
          value_parser = humantime::parse_duration)]
    pub extauthz_timeout: Duration,
    /// HTTP mode: put before the request's path on the server.
    #[arg(long, env = "GATEWAY_EXTAUTHZ_PATH_PREFIX", default_value = "")]
    pub extauthz_path_prefix: String,
    /// Checks in flight at once; past it the failure mode answers, so a slow
    /// server never queues requests.
    #[arg(long, env = "GATEWAY_EXTAUTHZ_MAX_IN_FLIGHT", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub extauthz_max_in_flight: u32,
    /// Send up to this many bytes of the request body with each check
    /// (Kourier's default, 8192), waiting for them; what comes after is
    /// not sent (`x-envoy-auth-partial-body: true`). 0 sends no body.
    #[arg(
        long,
        env = "GATEWAY_EXTAUTHZ_MAX_REQUEST_BODY_BYTES",
        default_value_t = 8192
    )]
    pub extauthz_max_request_body_bytes: u32,
    /// gRPC mode: send the body as bytes (`raw_body`), not as text (`body`),
    /// for bodies that are not UTF-8.
    #[arg(long, env = "GATEWAY_EXTAUTHZ_PACK_AS_BYTES")]
    pub extauthz_pack_as_bytes: bool,
    /// HTTPS mode: a PEM file of the CAs the server's certificate must
    /// chain to (default: the system's roots).
    #[arg(long, env = "GATEWAY_EXTAUTHZ_CA_FILE")]
    pub extauthz_ca_file: Option<std::path::PathBuf>,
    /// The lowest TLS version the HTTPS listeners accept: 1.2 or 1.3.
    #[arg(
        long,
        env = "GATEWAY_TLS_MIN_VERSION",
        value_enum,
        default_value = "1.2"
    )]
    pub tls_min_version: crate::tls::MinVersion,
    /// The cipher suites the HTTPS listeners offer, by the names rustls
    /// gives them, comma-separated in order of preference (e.g.
    /// `TLS13_AES_256_GCM_SHA384,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`).
    /// Default: every suite rustls implements. An unknown name stops the start.
    #[arg(long, env = "GATEWAY_TLS_CIPHER_SUITES", value_delimiter = ',')]
    pub tls_cipher_suites: Vec<String>,
    /// The `Server` header of responses: `pass` (the backend's, if any; the
    /// gateway's own answers send none), `strip` (never one), or any other
    /// value, set on every response.
    #[arg(long, env = "GATEWAY_SERVER_HEADER", default_value = "pass",
          value_parser = crate::server_header::parse)]
    pub server_header: crate::server_header::ServerHeader,
    /// Proxies in front of the gateway that each append the address they
    /// were reached from to `X-Forwarded-For`: the client is then the address
    /// this many entries from the right (Envoy's `xff_num_trusted_hops`),
    /// for the access log, spans and `X-Forwarded-For` upstream, which keeps
    /// only the entries from it on. 0: the peer is the client.
    #[arg(long, env = "GATEWAY_TRUSTED_HOPS", default_value_t = 0)]
    pub trusted_hops: u8,
    /// Serve plain HTTP/1.1 requests (no body or one of at most 64 KiB by
    /// Content-Length, no upgrade) on the fast path, handing the rest to the
    /// general proxy (docs/fast-path.md); `false` sends every request through
    /// the general proxy.
    #[arg(long, env = "GATEWAY_FAST_PATH", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub fast_path: bool,
    /// Send a span per sampled request to this OpenTelemetry collector, over
    /// OTLP/HTTP (http://host:port; the path defaults to /v1/traces). Off by
    /// default.
    #[arg(long, env = "GATEWAY_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<http::Uri>,
    /// Share of requests traced when the client sends no sampled or
    /// unsampled `traceparent` (whose decision is followed), 0 to 1.
    #[arg(long, env = "GATEWAY_TRACE_SAMPLING", default_value_t = 1.0,
          value_parser = parse_ratio)]
    pub trace_sampling: f64,
}

fn parse_otlp_endpoint(s: &str) -> Result<http::Uri, String> {
    crate::otlp::parse_endpoint(s).map_err(|e| e.to_string())
}

/// A number from 0 to 1.
fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

impl ServeArgs {
    /// The ports of the HTTPS listeners, where the status writer probes
    /// rules with TLS on every replica (all run these same listeners).
    pub fn tls_ports(&self) -> config_sync::status::TlsPorts {
        let port = |addr: &str| {
            listener(addr)?
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.port())
        };
        // Every address of a listener serves the same; the first one's port
        // is where replicas are probed.
        let first = |addrs: &[String]| addrs.first().and_then(|a| port(a));
        config_sync::status::TlsPorts {
            external: first(&self.https),
            internal: first(&self.internal_https),
        }
    }
}

/// `off`, or an address.
fn listener(addr: &str) -> Option<String> {
    (addr != "off").then(|| addr.to_owned())
}

/// A listener's addresses: none for `off`.
fn addresses(addrs: &[String]) -> Vec<String> {
    addrs.iter().filter_map(|a| listener(a)).collect()
}

/// The proxy listeners, each `off` or addresses (HTTP ones always listen).
#[derive(Debug, Clone)]
pub struct Listeners<'a> {
    /// External HTTP.
    pub http: &'a [String],
    /// Internal HTTP.
    pub internal_http: &'a [String],
    /// External HTTPS.
    pub https: &'a [String],
    /// Internal HTTPS.
    pub internal_https: &'a [String],
    /// Admin.
    pub admin: &'a str,
}

impl Tuning {
    /// Server settings for the given listeners; reads the default certificate
    /// files, if any.
    pub fn serve_config(&self, listeners: Listeners<'_>) -> anyhow::Result<ServeConfig> {
        let Listeners {
            http,
            internal_http,
            https,
            internal_https,
            admin,
        } = listeners;
        let default_certificate = match (&self.default_certificate_file, &self.default_key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::load_files(cert, key)?),
            _ => None,
        };
        let threads = match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(ServeConfig {
            http: addresses(http),
            internal_http: addresses(internal_http),
            https: addresses(https),
            internal_https: addresses(internal_https),
            tls: crate::tls::Policy::new(self.tls_min_version, &self.tls_cipher_suites)?,
            default_certificate,
            admin: admin.to_owned(),
            probes: listener(&self.probes),
            threads,
            upstream_idle_connections: self.upstream_idle_connections as usize,
            proxy: ProxyOptions {
                connect_timeout: self.connect_timeout,
                max_connect_attempts: self.max_connect_attempts as usize,
                internal_ports: Vec::new(),
                stream_idle_timeout: self.stream_idle_timeout,
                upstream_h2_streams: self.upstream_h2_streams as usize,
                max_request_headers: self.max_request_headers as usize,
                trusted_hops: self.trusted_hops,
                server_header: self.server_header.clone(),
                endpoints: dataplane::health::Policy {
                    eject_after: self.eject_after,
                    eject_for: self.eject_for,
                    slow_start: self.slow_start,
                },
            },
            shutdown_grace: self.shutdown_grace,
            shutdown_timeout: self.shutdown_timeout,
            max_connections: self.max_connections,
            access_log: self.access_log.clone(),
            proxy_protocol: self.proxy_protocol,
            fast_path: self.fast_path,
            authz: self
                .extauthz_host
                .as_ref()
                .map(|host| crate::authz::Config {
                    target: host.clone(),
                    protocol: self.extauthz_protocol,
                    failure_mode_allow: self.extauthz_failure_mode_allow,
                    timeout: self.extauthz_timeout,
                    path_prefix: self.extauthz_path_prefix.clone(),
                    max_in_flight: self.extauthz_max_in_flight as usize,
                    client_name: "knative-gateway".to_owned(),
                    max_request_body_bytes: self.extauthz_max_request_body_bytes as usize,
                    pack_as_bytes: self.extauthz_pack_as_bytes,
                    ca_file: self.extauthz_ca_file.clone(),
                }),
            otlp_endpoint: self.otlp_endpoint.clone(),
            trace_sampling: self.trace_sampling,
            resolve_wait: self.resolve_wait,
            upgrade: false,
            upgrade_socket: DEFAULT_UPGRADE_SOCKET.into(),
            request_head: crate::limits::request_head(
                self.max_request_header_bytes as usize,
                self.max_request_headers as usize,
                self.request_header_timeout,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exactly_one_source() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["gateway", "serve"], args].concat());
        assert!(parse(&["--file", "f"]).is_ok());
        assert!(parse(&["--kube", "--namespace", "a", "--namespace", "b"]).is_ok());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--file", "f", "--kube"]).is_err());
        let Command::Serve(args) = parse(&["--file", "f", "--namespace", "a"]).unwrap().command
        else {
            unreachable!()
        };
        assert_eq!(
            args.validate().unwrap_err(),
            "--namespace only applies with --kube"
        );
    }

    #[test]
    fn kube_max_backoff_defaults_to_5s_and_needs_kube() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["gateway", "serve"], args].concat());
        let serve = |args: &[&str]| match parse(args).unwrap().command {
            Command::Serve(args) => args,
            Command::Demo(_) => unreachable!(),
        };
        assert_eq!(
            serve(&["--kube"]).kube_options().max_backoff,
            Duration::from_secs(5)
        );
        assert_eq!(
            serve(&["--kube", "--kube-max-backoff", "30s"])
                .kube_options()
                .max_backoff,
            Duration::from_secs(30)
        );
        assert!(parse(&["--kube", "--kube-max-backoff", "soon"]).is_err());
        assert_eq!(
            serve(&["--file", "f", "--kube-max-backoff", "1s"])
                .validate()
                .unwrap_err(),
            "--kube-max-backoff only applies with --kube"
        );
        assert!(serve(&["--file", "f"]).validate().is_ok());
    }

    #[test]
    fn lease_and_services_default_to_the_pods_namespace() {
        let serve =
            |args: &[&str]| match Cli::try_parse_from([&["gateway", "serve"], args].concat())
                .unwrap()
                .command
            {
                Command::Serve(args) => args,
                Command::Demo(_) => unreachable!(),
            };
        let key = |k: config_sync::ObjectKey| k.to_string();
        let args = serve(&["--kube", "--pod-namespace", "edge"]);
        assert_eq!(key(args.lease()), "edge/knative-gateway");
        assert_eq!(key(args.public_service()), "edge/knative-gateway");
        assert_eq!(key(args.private_service()), "edge/knative-gateway-internal");
        let args = serve(&["--kube", "--pod-namespace", "edge", "--lease", "x/y"]);
        assert_eq!(key(args.lease()), "x/y", "a flag wins");
    }

    #[test]
    fn activator_must_be_host_and_port() {
        let parse =
            |a: &str| Cli::try_parse_from(["gateway", "serve", "--file", "f", "--activator", a]);
        assert!(parse("activator:80").is_ok());
        assert!(parse("activator").is_err());
        assert!(parse("activator:http").is_err());
        assert!(parse(":80").is_err());
    }
}
