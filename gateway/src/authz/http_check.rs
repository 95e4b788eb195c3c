//! The HTTP mode, as Envoy's `ext_authz` HTTP service: the request's method
//! and headers, its path after `--extauthz-path-prefix`, sent to the server
//! with no body; a 2xx allows, anything else goes back to the client as the
//! server sent it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{Check, CheckError, Config, Decision, Denial, Mutations};

/// Largest answer body passed on to a denied client.
const MAX_DENIAL_BODY: usize = 64 * 1024;

/// A client of one authorization server.
pub(super) struct HttpClient;

thread_local! {
    /// Each worker thread's pool of connections to the server, driven by
    /// the thread's own runtime (as the gRPC channel).
    static POOL: std::cell::RefCell<Option<Client<HttpConnector, Full<Bytes>>>> =
        const { std::cell::RefCell::new(None) };
}

fn pool() -> Client<HttpConnector, Full<Bytes>> {
    POOL.with_borrow_mut(|p| {
        p.get_or_insert_with(|| {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new()).build(connector)
        })
        .clone()
    })
}

impl HttpClient {
    pub(super) fn new(config: &Config) -> anyhow::Result<Self> {
        // Fail at start on a target no URI can hold.
        format!("http://{}{}", config.target, config.path_prefix)
            .parse::<http::Uri>()
            .map_err(|e| anyhow::anyhow!("--extauthz-host {}: {e}", config.target))?;
        Ok(HttpClient)
    }

    pub(super) async fn check(
        &self,
        config: &Config,
        check: &Check<'_>,
    ) -> Result<Decision, CheckError> {
        let uri = format!(
            "http://{}{}{}",
            config.target, config.path_prefix, check.path
        );
        let mut request = http::Request::builder().method(check.method).uri(uri);
        for (name, value) in check.headers {
            if !super::hop_by_hop(name) {
                request = request.header(name, value);
            }
        }
        let request = request
            .header(http::header::HOST, check.host)
            .header("client", config.client_name.as_str())
            .body(Full::default())
            .map_err(|e| CheckError::Failed(format!("cannot build the request: {e}")))?;
        let response = pool()
            .request(request)
            .await
            .map_err(|e| CheckError::Failed(format!("{e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Decision::Allow(Mutations::default()));
        }
        let headers = response
            .headers()
            .iter()
            .filter(|(name, _)| !super::hop_by_hop(name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let body = http_body_util::Limited::new(response.into_body(), MAX_DENIAL_BODY)
            .collect()
            .await
            .map_err(|e| CheckError::Failed(format!("the answer's body: {e}")))?
            .to_bytes();
        Ok(Decision::Deny(Denial {
            status: status.as_u16(),
            headers,
            body,
        }))
    }
}
