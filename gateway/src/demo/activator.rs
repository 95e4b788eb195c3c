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

/// Serve the activator stand-in on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, cluster: Arc<DemoCluster>) {
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (cluster, client) = (cluster.clone(), client.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, cluster.clone(), client.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    mut req: Request<Incoming>,
    cluster: Arc<DemoCluster>,
    client: Client<HttpConnector, Incoming>,
) -> Result<Response<Body>, Infallible> {
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
