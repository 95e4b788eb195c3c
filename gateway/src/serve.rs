//! `gateway serve`: a source (snapshot file or Kubernetes API) feeding the
//! proxy, and with `--kube` the KIngress status writer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use config_sync::sources::file::FileSource;
use config_sync::sources::kube::KubeSource;
use config_sync::status::{StatusOptions, StatusWriter};
use config_sync::{BuildOptions, Publisher};

use crate::activator::Activator;
use crate::cli::ServeArgs;
use crate::server::{self, Task};

/// Set up the sources (refusing to start on a broken file or kubeconfig), then serve.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    let publisher = Arc::new(Publisher::new(BuildOptions {
        cluster_domain: args.cluster_domain.clone(),
        internal_service: Some(args.private_service()),
        default_certificate: args.default_certificate.clone(),
        cluster_certificate: args.cluster_cert_secret.clone(),
        system_namespace: args.system_namespace.clone(),
    }));
    let tasks = match &args.file {
        Some(file) => {
            // Every label of a KIngress is kept only for the authorization server.
            let mut source = FileSource::new(file, publisher.clone())
                .with_class(&args.ingress_class)
                .with_labels(args.tuning.extauthz_host.is_some());
            source
                .load_initial()
                .with_context(|| format!("cannot start from {}", file.display()))?;
            vec![(
                "file-source",
                Task::new(move |shutdown| source.run(shutdown)),
            )]
        }
        None => kube_tasks(&args, &publisher)?,
    };
    let activator = Arc::new(
        Activator::new(&args.activator)
            .with_tls(args.activator_tls)
            .with_h2_port(args.activator_h2_port),
    );
    let mut config = args.tuning.serve_config(crate::cli::Listeners {
        http: &args.http,
        internal_http: &args.internal_http,
        https: &args.https,
        internal_https: &args.internal_https,
        admin: &args.admin,
    })?;
    config.upgrade = args.upgrade;
    config.upgrade_socket = args.upgrade_socket.clone();
    server::run(config, publisher, activator, tasks)
}

/// The kube source and the KIngress status writer, each with its own client
/// built on the runtime that polls it.
fn kube_tasks(
    args: &ServeArgs,
    publisher: &Arc<Publisher>,
) -> anyhow::Result<Vec<(&'static str, Task)>> {
    let config = kube_config(args.kubeconfig.as_deref())?;
    let options = args.kube_options();
    let status = StatusOptions {
        lease: args.lease(),
        identity: args.identity.clone(),
        public_service: args.public_service(),
        private_service: args.private_service(),
        cluster_domain: args.cluster_domain.clone(),
        interval: Duration::from_secs(1),
        source: options.source,
        tls_ports: args.tls_ports(),
        probe_concurrency: args.probe_concurrency as usize,
        qps: args.kube_api_qps,
        burst: args.kube_api_burst,
    };
    let (feed, kingresses) = tokio::sync::watch::channel(Arc::default());

    let (p, c) = (publisher.clone(), config.clone());
    let source = Task::new(move |shutdown| async move {
        match kube::Client::try_from(c) {
            Ok(client) => {
                KubeSource::new(client, p, options)
                    .feed_kingresses(feed)
                    .on_idle(Arc::new(crate::alloc::trim))
                    .run(shutdown)
                    .await
            }
            Err(e) => p.report_error(&e),
        }
    });
    let p = publisher.clone();
    let table = publisher.reader();
    let changes = publisher.subscribe();
    let health = publisher.writer_health().clone();
    let writer = Task::new(move |shutdown| async move {
        match kube::Client::try_from(config) {
            Ok(client) => {
                StatusWriter::new(client, status, kingresses, table)
                    .with_health(health)
                    .with_table_changes(changes)
                    .on_idle(Arc::new(crate::alloc::trim))
                    .run(shutdown)
                    .await
            }
            Err(e) => p.report_error(&e),
        }
    });
    Ok(vec![("kube-source", source), ("kingress-status", writer)])
}

/// Load the client configuration before starting, so a bad one stops us with a clear error.
fn kube_config(path: Option<&Path>) -> anyhow::Result<kube::Config> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match path {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .with_context(|| format!("invalid kubeconfig {}", path.display()))
            }
            None => kube::Config::infer()
                .await
                .context("no Kubernetes configuration: not in a cluster, and no kubeconfig found"),
        }
    })
}
