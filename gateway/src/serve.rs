//! `gateway serve --file`: the snapshot-file source feeding the proxy.

use std::sync::Arc;

use anyhow::Context;
use config_sync::sources::file::FileSource;
use config_sync::{BuildOptions, Publisher};

use crate::activator::Activator;
use crate::cli::ServeArgs;
use crate::server::{self, Task};

/// Load the file (refusing to start on a broken one), then serve and watch it.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let publisher = Arc::new(Publisher::new(BuildOptions {
        cluster_domain: args.cluster_domain.clone(),
    }));
    let mut source = FileSource::new(&args.file, publisher.clone());
    source
        .load_initial()
        .with_context(|| format!("cannot start from {}", args.file.display()))?;
    let activator = Arc::new(Activator::new(&args.activator));
    let config = args.tuning.serve_config(&args.http, &args.admin);
    server::run(
        config,
        publisher,
        activator,
        vec![(
            "file-source",
            Task::new(move |shutdown| source.run(shutdown)),
        )],
    )
}
