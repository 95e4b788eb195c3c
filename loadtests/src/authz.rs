//! An external authorization server for the `authz` scenario: Envoy's gRPC
//! `Authorization` service (the `envoy-types` types, tonic), allowing every
//! request and asking for one header to be set, on a runtime of its own.
//! The gateway and Envoy are pointed at the same one.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    check_response, CheckRequest, CheckResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;

struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let header = HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-authz".into(),
                value: "ok".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![header],
                ..Default::default()
            })),
            ..Default::default()
        }))
    }
}

/// A running server; stops when dropped (its runtime shuts down).
pub struct AuthzServer {
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

/// Start the server on a free loopback port with `threads` runtime threads.
pub fn start(threads: usize) -> anyhow::Result<AuthzServer> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("authz-server")
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    runtime.spawn(async move {
        let incoming = futures::stream::unfold(listener, |l| async move {
            let next = l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                s
            });
            Some((next, l))
        });
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(AllowAll))
            .serve_with_incoming(incoming)
            .await
        {
            eprintln!("authz server: {e}");
        }
    });
    Ok(AuthzServer {
        addr,
        _runtime: runtime,
    })
}
