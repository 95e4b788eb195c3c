//! Assembles the pingora server shared by `serve` and `demo`: the proxy
//! service on every core, the admin service, and background tasks (sources,
//! activator resolution).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use config_sync::Publisher;
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig, Listeners, TcpSocketOptions};
use pingora::protocols::http::v1::server::RequestHeadLimits;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::activator::{Activator, ActivatorResolver};
use crate::admin::Admin;
use crate::drain::{Drain, DrainSignal};
use crate::exchange::{Gateway, ProxyOptions};
use crate::external::ExternalNames;
use crate::fast::app::{FastPath, ProxyApp};
use crate::limits::ConnectionLimit;
use crate::metrics::Metrics;
use crate::proxy_protocol::ProxyProtocol;
use crate::tls::SniResolver;

/// Listener and runtime settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// External proxy listener's addresses: public routes only.
    pub http: Vec<String>,
    /// Internal proxy listener's addresses: every route, including cluster-local ones.
    pub internal_http: Vec<String>,
    /// External HTTPS listener's addresses (none: off).
    pub https: Vec<String>,
    /// Internal HTTPS listener's addresses (none: off).
    pub internal_https: Vec<String>,
    /// TLS versions and cipher suites the HTTPS listeners accept.
    pub tls: crate::tls::Policy,
    /// Certificate for names the table has none for (`--default-certificate-file`).
    pub default_certificate: Option<Arc<rustls::sign::CertifiedKey>>,
    /// Admin listener.
    pub admin: String,
    /// Probes and scraping listener (`/metrics`, `/healthz`, `/readyz`), if any.
    pub probes: Option<String>,
    /// Proxy worker threads.
    pub threads: usize,
    /// Idle upstream connections kept for reuse, across all pods.
    pub upstream_idle_connections: usize,
    /// Proxy behaviour.
    pub proxy: ProxyOptions,
    /// After SIGTERM, keep serving this long (load balancers and endpoints catch up).
    pub shutdown_grace: Duration,
    /// Then give in-flight requests this long to finish.
    pub shutdown_timeout: Duration,
    /// Client connections served at once (0: from the open-file limit).
    pub max_connections: usize,
    /// Size, header count and time allowed for each HTTP/1.x request head.
    pub request_head: RequestHeadLimits,
    /// Where the access log goes, if anywhere.
    pub access_log: crate::access_log::Target,
    /// Read a PROXY protocol header on the external listeners.
    pub proxy_protocol: bool,
    /// Serve plain HTTP/1.1 requests on the fast path (`fast/`).
    pub fast_path: bool,
    /// The external authorization server, if any.
    pub authz: Option<crate::authz::Config>,
    /// The OpenTelemetry collector spans go to, if any.
    pub otlp_endpoint: Option<http::Uri>,
    /// Share of requests traced without a caller's decision.
    pub trace_sampling: f64,
    /// Take over the listening sockets of a running gateway (`--upgrade`).
    pub upgrade: bool,
    /// The Unix socket listening sockets are handed over through, both ways.
    pub upgrade_socket: std::path::PathBuf,
    /// How long `/readyz` waits for the activator and ExternalNames to resolve.
    pub resolve_wait: Duration,
}

type TaskFn = Box<dyn FnOnce(ShutdownWatch) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A future run once as a pingora background service, on its own runtime.
pub struct Task(Mutex<Option<TaskFn>>);

impl Task {
    /// Wrap `f`, which receives pingora's shutdown watch.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: FnOnce(ShutdownWatch) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self(Mutex::new(Some(Box::new(move |s| Box::pin(f(s))))))
    }
}

#[async_trait]
impl BackgroundService for Task {
    async fn start(&self, shutdown: ShutdownWatch) {
        let f = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = f {
            f(shutdown).await;
        }
    }
}

/// pingora takes background services by value; the proxy shares the resolver.
struct ExternalNamesTask(Arc<ExternalNames>);

#[async_trait]
impl BackgroundService for ExternalNamesTask {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.start(shutdown).await
    }
}

/// Run the gateway until a signal stops it. `tasks` are named background tasks
/// (the sources). Returns only on a start-up error.
pub fn run(
    config: ServeConfig,
    publisher: Arc<Publisher>,
    activator: Arc<Activator>,
    tasks: Vec<(&'static str, Task)>,
) -> anyhow::Result<()> {
    // Fail here with a clear message rather than inside pingora's start-up.
    // An upgrade takes over sockets the old process holds: nothing to bind.
    let mut ports: Vec<(&str, u16)> = Vec::new();
    let single = |addr: &Option<String>| addr.iter().cloned().collect::<Vec<_>>();
    let (admin, probes) = (vec![config.admin.clone()], single(&config.probes));
    for (what, addrs) in [
        ("--http", &config.http),
        ("--internal-http", &config.internal_http),
        ("--https", &config.https),
        ("--internal-https", &config.internal_https),
        ("--admin", &admin),
        ("--probes", &probes),
    ] {
        for addr in addrs {
            let port = if config.upgrade {
                std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
                    .ok()
                    .and_then(|mut a| a.next())
                    .with_context(|| format!("{addr} ({what}) is not an address"))?
                    .port()
            } else {
                let listener = std::net::TcpListener::bind(addr.as_str())
                    .with_context(|| format!("cannot listen on {addr} ({what})"))?;
                listener.local_addr()?.port()
            };
            ports.push((what, port));
        }
    }
    // The listener a request came in on is told by its local port: the
    // addresses of one listener may share a port, two listeners may not.
    for (i, (a, port)) in ports.iter().enumerate() {
        if let Some((b, _)) = ports[..i].iter().find(|(b, p)| p == port && b != a) {
            anyhow::bail!("{b} and {a} must use different ports (both {port})");
        }
    }
    let mut config = config;
    config.proxy.internal_ports = ports
        .iter()
        .filter(|(what, _)| what.starts_with("--internal"))
        .map(|(_, port)| *port)
        .collect();
    let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
    // The answers pingora builds (errors) carry the same `Server` as the
    // gateway's own: none unless one is set (never pingora's name).
    let server_name = match &config.proxy.server_header {
        crate::server_header::ServerHeader::Set(v) => {
            Some(&*Box::leak(v.as_bytes().to_vec().into_boxed_slice()))
        }
        _ => None,
    };
    pingora::protocols::http::set_server_name(server_name);

    let conf = ServerConf {
        threads: config.threads,
        // SIGTERM is held back for --shutdown-grace (drain.rs); once pingora
        // gets it, its grace period is the time requests in flight have to
        // finish, while its runtimes keep running (rounded up to seconds).
        grace_period_seconds: Some(whole_seconds(config.shutdown_timeout)),
        // Then the runtimes' own teardown.
        graceful_shutdown_timeout_seconds: Some(RUNTIME_TEARDOWN_SECONDS),
        // Our own fail_to_connect decides retries; this only caps them.
        max_retries: config.proxy.max_connect_attempts.max(1),
        // One single-threaded runtime per worker thread: a connection stays on
        // its thread, and tokio's stealing bookkeeping is off the request path
        // (callgrind and the loadtests measured the difference: docs/performance.md).
        work_stealing: false,
        upstream_keepalive_pool_size: config.upstream_idle_connections,
        // Each worker thread keeps its own idle connections: no task, lock
        // or channel per request (vendor/README.md, "idle connections per
        // thread"). Connections never leave their thread (no work stealing).
        upstream_keepalive_per_thread: true,
        upgrade_sock: config
            .upgrade_socket
            .to_str()
            .context("--upgrade-socket must be valid UTF-8")?
            .to_owned(),
        ..ServerConf::default()
    };
    // Header names are case-insensitive, and Knative's own ingresses (Envoy)
    // send them lower-case: one header map per message instead of two
    // (vendor/README.md, "header case").
    pingora::protocols::http::v1::common::set_preserve_header_case(false);
    let opt = pingora::server::configuration::Opt {
        upgrade: config.upgrade,
        ..Default::default()
    };
    if config.upgrade {
        tracing::info!(socket = %config.upgrade_socket.display(),
            "waiting for the running gateway's listening sockets: send it SIGQUIT");
    }
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // With --upgrade, this waits for the old process's sockets (pingora
    // exits if none arrive).
    server.bootstrap();

    let external = Arc::new(ExternalNames::new(publisher.reader()));
    let gateway = Gateway::new(
        publisher.reader(),
        publisher.probes(),
        activator.clone(),
        external.clone(),
        metrics.clone(),
        config.proxy.clone(),
    );
    let access_log =
        crate::access_log::AccessLog::open(&config.access_log, metrics.access_log_dropped.clone())
            .with_context(|| format!("cannot open the access log {}", config.access_log))?;
    let reopen = access_log.as_ref().and_then(|log| log.reopener());
    let gateway = match access_log {
        Some(log) => gateway.with_access_log(log),
        None => gateway,
    };
    let gateway = match &config.otlp_endpoint {
        Some(endpoint) => {
            let service =
                std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "knative-gateway".into());
            let tracer = crate::otlp::Tracer::start(
                endpoint.clone(),
                config.trace_sampling,
                service,
                metrics.trace.clone(),
            )
            .context("cannot start the OTLP exporter")?;
            gateway.with_tracer(tracer)
        }
        None => gateway,
    };
    let gateway = match &config.authz {
        Some(authz) => gateway.with_authorizer(
            crate::authz::Authorizer::new(authz.clone(), metrics.registry())
                .context("cannot set up external authorization")?,
        ),
        None => gateway,
    };
    let mut app = pingora::proxy::http_proxy(&server.configuration, gateway.clone());
    // HTTP/1.1 and h2c with prior knowledge on the same ports: the first
    // bytes decide (the HTTP/2 preface, or not; see vendor/README.md).
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    options.h1_request_head_limits = config.request_head;
    app.server_options = Some(options);
    // The same header list limit for HTTP/2 as for HTTP/1.x heads.
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(config.request_head.max_bytes.try_into().unwrap_or(u32::MAX));
    app.h2_options = Some(h2);
    let open_files = crate::limits::raise_open_files();
    let max_connections = match config.max_connections {
        0 => crate::limits::auto_max_connections(open_files),
        n => n,
    };
    let app = Arc::new(app);
    let app = if config.fast_path {
        ProxyApp::Fast(Arc::new(FastPath::new(gateway, app)))
    } else {
        ProxyApp::General(app)
    };
    let app = ConnectionLimit::new(app, max_connections, metrics.connections.clone());
    // A TLS handshake, or a PROXY header, gets as long as a request head.
    let handshake_timeout = config
        .request_head
        .timeout
        .unwrap_or(Duration::from_secs(10));
    let mut listeners = Listeners::new();
    if config.proxy_protocol {
        let external = ports
            .iter()
            .filter(|(what, _)| matches!(*what, "--http" | "--https"))
            .map(|(_, port)| *port)
            .collect();
        listeners.set_pre_tls_callback(Arc::new(ProxyProtocol::new(external)));
    }
    let every: Vec<&String> = [
        &config.http,
        &config.internal_http,
        &config.https,
        &config.internal_https,
    ]
    .into_iter()
    .flatten()
    .collect();
    for addr in config.http.iter().chain(&config.internal_http) {
        // Reads go straight into pingora's request buffer: its default 64 KiB
        // read buffer per client connection only adds a copy for plaintext
        // HTTP/1.1, and at 256 connections 16 MiB of cache-cold memory.
        listeners
            .add_listener(listen_on(addr, &every).l4_buffer(L4BufferSettings::default().read(0)));
    }
    for (addrs, internal) in [(&config.https, false), (&config.internal_https, true)] {
        if addrs.is_empty() {
            continue;
        }
        let resolver = Arc::new(SniResolver::new(
            publisher.reader(),
            config.default_certificate.clone(),
            internal,
        ));
        for addr in addrs {
            // rustls reads records into its own buffer: an L4 read buffer
            // under it is one more copy of every byte.
            listeners.add_listener(
                listen_on(addr, &every)
                    .tls(crate::tls::settings(resolver.clone(), &config.tls)?)
                    .l4_buffer(L4BufferSettings::default().read(0)),
            );
        }
    }
    let mut proxy = Service::with_listeners("proxy".into(), listeners, app);
    proxy.threads = Some(config.threads);
    // Not pingora's 60 s: a client that stalls its handshake holds a
    // connection the cap does not count yet (vendor/README.md, "handshake
    // timeout").
    proxy.set_handshake_timeout(handshake_timeout);
    // A new connection goes to the worker thread holding the fewest, not a
    // random one: keep-alive connections stay where they land, so a random
    // pick leaves one thread with a longer queue and a longer tail
    // (vendor/README.md, "connections balanced across threads").
    proxy.balance_connections(true);
    // /readyz waits for the proxy listeners: the admin service may answer
    // before they are bound (vendor/README.md, "listening notification").
    let listening = Arc::new(AtomicBool::new(false));
    let bound = listening.clone();
    proxy.on_listening(Box::new(move || bound.store(true, Ordering::Release)));

    let drain = Arc::new(Drain::default());
    let app = || {
        Admin::new(
            publisher.clone(),
            metrics.clone(),
            activator.clone(),
            drain.clone(),
            listening.clone(),
        )
        .with_policy(config.proxy.endpoints)
        .with_resolutions(external.clone(), config.resolve_wait)
    };
    let mut admin = Service::new("admin".into(), app());
    admin.add_tcp(&config.admin);
    admin.threads = Some(1);
    // Probes and scraping on a listener of their own, which shows no table.
    let probes = config.probes.as_ref().map(|addr| {
        let mut probes = Service::new("probes".into(), app().probes_only());
        probes.add_tcp(addr);
        probes.threads = Some(1);
        probes
    });

    server.add_service(proxy);
    server.add_service(admin);
    if let Some(probes) = probes {
        server.add_service(probes);
    }
    server.add_service(background_service(
        "activator-resolver",
        ActivatorResolver(activator),
    ));
    server.add_service(background_service(
        "external-names",
        ExternalNamesTask(external),
    ));
    server.add_service(background_service(
        "sighup",
        Task::new(move |shutdown| crate::drain::on_hangup(reopen, shutdown)),
    ));
    for (name, task) in tasks {
        server.add_service(background_service(name, task));
    }
    let shown = |addrs: &[String]| match addrs {
        [] => "off".to_owned(),
        addrs => addrs.join(","),
    };
    tracing::info!(http = shown(&config.http), internal_http = shown(&config.internal_http),
        https = shown(&config.https),
        internal_https = shown(&config.internal_https),
        admin = %config.admin, probes = config.probes.as_deref().unwrap_or("off"), threads = config.threads, max_connections,
        proxy_protocol = config.proxy_protocol,
        otlp = config.otlp_endpoint.as_ref().map_or("off".into(), |e| e.to_string()),
        open_files, "gateway listening");
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainSignal {
            drain,
            grace: config.shutdown_grace,
        }),
    });
    tracing::info!("gateway stopped");
    std::process::exit(0)
}

/// Seconds pingora gives its runtimes to stop once requests had their time.
pub const RUNTIME_TEARDOWN_SECONDS: u64 = 1;

/// `d` in whole seconds, rounded up: a timeout never shorter than asked.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A TCP listener on `addr`. An IPv6 address that shares its port with an
/// IPv4 one among `every` address listened on (`--http 0.0.0.0:8080 --http
/// [::]:8080`) listens for IPv6 only, or the two would collide; alone,
/// `[::]:8080` takes both families, as the system sets it.
fn listen_on(addr: &str, every: &[&String]) -> ListenerConfig {
    let config = ListenerConfig::tcp(addr);
    let parse = |a: &str| a.parse::<std::net::SocketAddr>().ok();
    let Some(v6) = parse(addr).filter(|a| a.is_ipv6()) else {
        return config;
    };
    let shared = every
        .iter()
        .filter_map(|a| parse(a))
        .any(|a| a.is_ipv4() && a.port() == v6.port());
    if !shared {
        return config;
    }
    let mut options = TcpSocketOptions::default();
    options.ipv6_only = Some(true);
    config.tcp_socket_options(options)
}
