//! `gateway serve`: a source (snapshot file or Kubernetes API) feeding the proxy.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use config_sync::sources::file::FileSource;
use config_sync::sources::kube::{KubeOptions, KubeSource};
use config_sync::{BuildOptions, Publisher};

use crate::activator::Activator;
use crate::cli::ServeArgs;
use crate::server::{self, Task};

/// Set up the source (refusing to start on a broken file or kubeconfig), then serve.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    let publisher = Arc::new(Publisher::new(BuildOptions {
        cluster_domain: args.cluster_domain.clone(),
    }));
    let source = match &args.file {
        Some(file) => {
            let mut source = FileSource::new(file, publisher.clone());
            source
                .load_initial()
                .with_context(|| format!("cannot start from {}", file.display()))?;
            Task::new(move |shutdown| source.run(shutdown))
        }
        None => {
            let config = kube_config(args.kubeconfig.as_deref())?;
            let options = KubeOptions {
                namespaces: args.namespaces.clone(),
                ..KubeOptions::default()
            };
            let publisher = publisher.clone();
            // The client is built on the runtime that polls it.
            Task::new(move |shutdown| async move {
                match kube::Client::try_from(config) {
                    Ok(client) => {
                        KubeSource::new(client, publisher, options)
                            .run(shutdown)
                            .await
                    }
                    Err(e) => publisher.report_error(&e),
                }
            })
        }
    };
    let activator = Arc::new(Activator::new(&args.activator));
    let config = args
        .tuning
        .serve_config(&args.http, &args.internal_http, &args.admin);
    server::run(config, publisher, activator, vec![("source", source)])
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
