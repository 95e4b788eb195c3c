//! The gRPC mode: `envoy.service.auth.v3.Authorization/Check`, with the
//! request types of the `envoy-types` crate, over one lazily connected,
//! reconnecting h2c channel.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, HeaderValueOption, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context, check_response, AttributeContext, CheckRequest, DeniedHttpResponse,
};
use http::{HeaderName, HeaderValue};
use tonic::transport::{Channel, Endpoint};

use super::{Check, CheckError, Config, Decision, Denial, Mutations};

/// A client of one authorization server.
pub(super) struct GrpcClient {
    endpoint: Endpoint,
}

thread_local! {
    /// Each worker thread's channel ([`super::per_thread`]).
    static CHANNEL: std::cell::RefCell<Option<AuthorizationClient<Channel>>> =
        const { std::cell::RefCell::new(None) };
}

impl GrpcClient {
    /// For `target` (`HOST:PORT`); nothing is dialled until the first check.
    pub(super) fn new(target: &str) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(format!("http://{target}"))
            .map_err(|e| anyhow::anyhow!("--extauthz-host {target}: {e}"))?
            .tcp_nodelay(true);
        Ok(GrpcClient { endpoint })
    }

    /// This thread's client, made on first use (it reconnects by itself).
    fn client(&self) -> AuthorizationClient<Channel> {
        super::per_thread(&CHANNEL, || {
            AuthorizationClient::new(self.endpoint.connect_lazy())
        })
    }

    pub(super) async fn check(
        &self,
        config: &Config,
        check: &Check<'_>,
    ) -> Result<Decision, CheckError> {
        let request = check_request(config, check);
        let mut grpc = tonic::Request::new(request);
        if let Ok(client) = config.client_name.parse() {
            grpc.metadata_mut().insert("client", client);
        }
        let response = self
            .client()
            .check(grpc)
            .await
            .map_err(|s| CheckError::Failed(format!("gRPC {:?}: {}", s.code(), s.message())))?
            .into_inner();
        let code = response.status.as_ref().map_or(0, |s| s.code);
        match response.http_response {
            Some(check_response::HttpResponse::OkResponse(ok)) if code == 0 => {
                Ok(Decision::Allow(Mutations {
                    set: header_options(&ok.headers, false),
                    append: header_options(&ok.headers, true),
                    remove: ok
                        .headers_to_remove
                        .iter()
                        .filter_map(|n| n.parse().ok())
                        .collect(),
                }))
            }
            None if code == 0 => Ok(Decision::Allow(Mutations::default())),
            Some(check_response::HttpResponse::DeniedResponse(denied)) => {
                Ok(Decision::Deny(denial(&denied)))
            }
            Some(check_response::HttpResponse::ErrorResponse(error)) => {
                Err(CheckError::ServerError(denial(&error)))
            }
            // Not OK, without an answer for the client: Envoy's 403.
            _ => Ok(Decision::Deny(Denial::forbidden())),
        }
    }
}

/// The `CheckRequest` Envoy would send for `check`.
fn check_request(config: &Config, check: &Check<'_>) -> CheckRequest {
    let mut headers: HashMap<String, String> = HashMap::with_capacity(check.headers.len() + 4);
    for (name, value) in check.headers {
        let Ok(value) = value.to_str() else { continue };
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    // Envoy hands the server HTTP/2's pseudo-headers for every request.
    headers.insert(":method".into(), check.method.to_owned());
    headers.insert(":path".into(), check.path.to_owned());
    headers.insert(":authority".into(), check.host.to_owned());
    headers.insert(":scheme".into(), check.scheme.to_owned());
    let query = check.path.split_once('?').map_or("", |(_, q)| q);
    let size = check
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(-1);
    let (mut body, mut raw_body) = (String::new(), Vec::new());
    if let Some(b) = check.body {
        headers.insert(
            super::Body::PARTIAL_HEADER.as_str().to_owned(),
            b.partial_value().to_str().unwrap_or_default().to_owned(),
        );
        if config.pack_as_bytes {
            raw_body = b.bytes.to_vec();
        } else {
            // A protobuf string is UTF-8: a binary body needs pack-as-bytes.
            body = String::from_utf8_lossy(&b.bytes).into_owned();
        }
    }
    let http = attribute_context::HttpRequest {
        method: check.method.to_owned(),
        headers,
        path: check.path.to_owned(),
        host: check.host.to_owned(),
        scheme: check.scheme.to_owned(),
        query: query.to_owned(),
        protocol: check.protocol.to_owned(),
        size,
        body,
        raw_body,
        ..Default::default()
    };
    let source = check.client.map(|ip| attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    });
    // As Kourier: the KIngress's labels over `client` and `visibility`.
    let mut context_extensions = HashMap::new();
    context_extensions.insert("client".to_owned(), config.client_name.clone());
    context_extensions.insert("visibility".to_owned(), check.visibility.to_owned());
    for (key, value) in check.labels.iter() {
        context_extensions.insert(key.to_owned(), value.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source,
            request: Some(attribute_context::Request {
                http: Some(http),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

/// The headers of `options` to append (`append`) or to set. In ext_authz
/// answers a header replaces the request's unless its (deprecated, still
/// what servers send) `append` is true.
#[allow(deprecated)]
fn header_options(options: &[HeaderValueOption], append: bool) -> Vec<(HeaderName, HeaderValue)> {
    options
        .iter()
        .filter(|o| o.append.is_some_and(|a| a.value) == append)
        .filter_map(|o| {
            let h = o.header.as_ref()?;
            let value = if h.raw_value.is_empty() {
                HeaderValue::from_str(&h.value).ok()?
            } else {
                HeaderValue::from_bytes(&h.raw_value).ok()?
            };
            Some((h.key.parse().ok()?, value))
        })
        .collect()
}

fn denial(denied: &DeniedHttpResponse) -> Denial {
    let status = denied
        .status
        .as_ref()
        .map(|s| s.code)
        .filter(|c| (200..=599).contains(c))
        .map_or(403, |c| c as u16);
    let mut headers = header_options(&denied.headers, false);
    headers.extend(header_options(&denied.headers, true));
    headers.retain(|(name, _)| !super::hop_by_hop(name));
    Denial {
        status,
        headers,
        body: denied.body.clone().into(),
    }
}
