//! The test API server as a process of its own, filled with a cluster of a
//! given size (see `population`), for the `kube-scale` load test: its work
//! then shares no CPU time with the client's. Prints `listening on ADDR`
//! once filled; `GET /_test/stats` tells how many KIngresses are Ready and
//! the requests served by verb and resource.

use std::net::SocketAddr;
use std::path::PathBuf;

use test_apiserver::population::Population;
use test_apiserver::ApiServer;

fn usage() -> ! {
    eprintln!(
        "usage: scale-apiserver --kubeconfig PATH [--kingresses N] [--unrelated N] [--class CLASS] [--backend ADDR]"
    );
    std::process::exit(2)
}

fn main() {
    let mut population = Population {
        kingresses: 10_000,
        unrelated: 20_000,
        class: "knative-gateway.ingress.networking.knative.dev".into(),
        backend: SocketAddr::from(([127, 0, 0, 1], 9)),
    };
    let mut kubeconfig: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        let bad = |what: &str| -> ! {
            eprintln!("{flag}: {value:?} is not {what}");
            std::process::exit(2)
        };
        match flag.as_str() {
            "--kubeconfig" => kubeconfig = Some(value.into()),
            "--kingresses" => {
                population.kingresses = value.parse().unwrap_or_else(|_| bad("a count"))
            }
            "--unrelated" => {
                population.unrelated = value.parse().unwrap_or_else(|_| bad("a count"))
            }
            "--class" => population.class = value,
            "--backend" => population.backend = value.parse().unwrap_or_else(|_| bad("an address")),
            _ => usage(),
        }
    }
    let Some(kubeconfig) = kubeconfig else {
        usage()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let api = ApiServer::start().await;
        for object in population.objects() {
            api.apply(object);
        }
        api.write_kubeconfig(&kubeconfig);
        println!("listening on {}", api.url());
        // Until killed.
        std::future::pending::<()>().await;
    });
}
