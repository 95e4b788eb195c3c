//! A stand-in for Knative's activator: reads `Knative-Serving-Revision` and
//! `Knative-Serving-Namespace`, wakes the revision (starts its sample server
//! and publishes its endpoint), then forwards the held request to it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::DemoCluster;
use crate::activator::{NAMESPACE_HEADER, REVISION_HEADER};

type Body = BoxBody<Bytes, hyper::Error>;

fn text(code: StatusCode, msg: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(msg)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = code;
    resp
}

/// Clients to woken revisions: HTTP/1.1, and HTTP/2 cleartext for requests
/// that came over HTTP/2 (gRPC), as Knative's activator forwards each.
#[derive(Clone)]
struct Clients {
    h1: Client<HttpConnector, Incoming>,
    h2: Client<HttpConnector, Incoming>,
}

/// Serve the activator stand-in on `listener` (HTTP/1.1 and h2c, as
/// Knative's activator serves on 8012 and 8013) until the task is dropped.
pub async fn serve(listener: TcpListener, cluster: Arc<DemoCluster>) {
    let clients = Clients {
        h1: Client::builder(TokioExecutor::new()).build_http(),
        h2: Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http(),
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (cluster, clients) = (cluster.clone(), clients.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, cluster.clone(), clients.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    mut req: Request<Incoming>,
    cluster: Arc<DemoCluster>,
    clients: Clients,
) -> Result<Response<Body>, Infallible> {
    let client = if req.version() == hyper::Version::HTTP_2 {
        clients.h2
    } else {
        clients.h1
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (Some(ns), Some(rev)) = (header(NAMESPACE_HEADER), header(REVISION_HEADER)) else {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            format!("{REVISION_HEADER} and {NAMESPACE_HEADER} are required\n"),
        ));
    };
    let Some(addr) = cluster.wake(&ns, &rev).await else {
        return Ok(text(
            StatusCode::NOT_FOUND,
            format!("unknown revision {ns}/{rev}\n"),
        ));
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    match format!("http://{addr}{path}").parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(e) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                format!("bad request path: {e}\n"),
            ))
        }
    }
    match client.request(req).await {
        Ok(resp) => Ok(resp.map(|b| b.boxed())),
        Err(e) => Ok(text(
            StatusCode::BAD_GATEWAY,
            format!("revision {ns}/{rev} at {addr} failed: {e}\n"),
        )),
    }
}
