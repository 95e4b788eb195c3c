//! Scenario: Knative's system-internal TLS. The split route of `split`, its
//! backends serving HTTP/1.1 over TLS 1.3 with a certificate for
//! `kn-user-default`, through the gateway and Envoy (configured as Kourier
//! configures it), each beside the same proxy to plaintext backends:
//! keep-alive requests per second, gateway ÷ Envoy and TLS ÷ plaintext.

use std::sync::Arc;

use super::{hello, Ctx, A, B};
use crate::peers::{Kind, Launch};
use crate::topology::{Topology, UpstreamTls};

/// The name in the backends' certificates (namespace `default`).
const NAME: &str = "kn-user-default";

/// Run the scenario.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (acceptor, tls) = certificates(dir.path())?;
    let plain_a = ctx.backends(A, 2)?;
    let plain_b = ctx.backends(B, 2)?;
    let tls_backends = |revision| -> anyhow::Result<Vec<_>> {
        (0..2)
            .map(|_| ctx.pods.start_tls(revision, acceptor.clone()))
            .collect()
    };
    let (tls_a, tls_b) = (tls_backends(A)?, tls_backends(B)?);
    let plain = Topology {
        routes: vec![hello(
            &[&plain_a[0], &plain_a[1]],
            &[&plain_b[0], &plain_b[1]],
            90,
            10,
        )],
        upstream_tls: None,
        authz: None,
    };
    let encrypted = Topology {
        routes: vec![hello(
            &[&tls_a[0], &tls_a[1]],
            &[&tls_b[0], &tls_b[1]],
            90,
            10,
        )],
        upstream_tls: Some(tls),
        authz: None,
    };
    let host = plain.routes[0].host();
    let threads = ctx.max_threads();
    for (kind, bin) in ctx.proxies() {
        if !matches!(kind, Kind::Gateway | Kind::Envoy) {
            continue;
        }
        for (topology, label) in [(&plain, "plaintext"), (&encrypted, "tls")] {
            let proxy_name = format!("{} {label}", kind.name());
            ctx.progress(format!("upstream-tls: {proxy_name}, {threads} threads"));
            let launch = Launch::plain(kind, bin, topology, threads);
            let what = format!("upstream-tls: {proxy_name}");
            let Some(proxy) = ctx.start(&launch, &host, &what) else {
                continue;
            };
            ctx.measure_conns(&proxy, &host, "upstream-tls", &proxy_name, threads);
        }
    }
    Ok(())
}

/// A CA, the backends' TLS 1.3 acceptor with a certificate for [`NAME`]
/// signed by it, and the CA as the proxies trust it.
fn certificates(dir: &std::path::Path) -> anyhow::Result<(tokio_rustls::TlsAcceptor, UpstreamTls)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "loadtest system-internal CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![NAME.to_owned()])?.signed_by(&key, &issuer)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
                .map_err(anyhow::Error::msg)?,
        )?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem())?;
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        UpstreamTls {
            ca_pem: ca_cert.pem(),
            ca_file,
            name: NAME.into(),
        },
    ))
}
