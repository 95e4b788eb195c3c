//! Envoy: a virtual host per route whose `weighted_clusters` carry the split,
//! a STATIC cluster per endpoint group (HTTP/1.1 upstream, pooled).

use serde_json::{json, Value};

use super::TlsFiles;
use crate::topology::{upstream_of, upstreams, Topology};

/// Envoy's bootstrap (JSON is YAML) listening on `port` (HTTP/1.1 and h2c:
/// the connection manager's codec detects either), admin on `admin_port`,
/// and HTTPS on the port of `tls`.
pub fn config(t: &Topology, port: u16, admin_port: u16, tls: Option<(u16, &TlsFiles)>) -> String {
    let groups = upstreams(t);
    let virtual_hosts: Vec<Value> = t
        .routes
        .iter()
        .enumerate()
        .map(|(r, route)| {
            let clusters: Vec<Value> = route
                .revisions
                .iter()
                .filter(|v| v.percent > 0 && !v.endpoints.is_empty())
                .map(|v| json!({"name": format!("u{}", upstream_of(&groups, v)), "weight": v.percent}))
                .collect();
            json!({
                "name": format!("r{r}"),
                "domains": [route.host()],
                "routes": [{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": clusters}}}]
            })
        })
        .collect();
    let clusters: Vec<Value> = groups
        .iter()
        .enumerate()
        .map(|(i, eps)| {
            let lb: Vec<Value> = eps
                .iter()
                .map(|ep| json!({"endpoint": {"address": {"socket_address": {"address": ep.ip().to_string(), "port_value": ep.port()}}}}))
                .collect();
            let mut cluster = json!({
                "name": format!("u{i}"),
                "type": "STATIC",
                "lb_policy": "ROUND_ROBIN",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": format!("u{i}"), "endpoints": [{"lb_endpoints": lb}]}
            });
            if let Some(tls) = &t.upstream_tls {
                cluster["transport_socket"] = upstream_tls(tls);
            }
            cluster
        })
        .collect();
    let mut clusters = clusters;
    let mut http_filters = Vec::new();
    if let Some(authz) = t.authz {
        // As Kourier configures it (net-kourier `externalAuthzFilter`), but
        // for the request body, which the gateway does not send either.
        http_filters.push(json!({
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3",
                "failure_mode_allow": false,
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": "extAuthz"},
                    "timeout": "2s",
                    "initial_metadata": [{"key": "client", "value": "kourier"}]
                }
            }
        }));
        clusters.push(json!({
            "name": "extAuthz",
            "type": "STATIC",
            "connect_timeout": "5s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "load_assignment": {"cluster_name": "extAuthz", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": authz.ip().to_string(), "port_value": authz.port()}}}}
            ]}]}
        }));
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            "suppress_envoy_headers": true
        }
    }));
    let manager = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            // nginx needs $request_id for its split; Envoy's weighted clusters don't.
            "generate_request_id": false,
            "route_config": {"name": "routes", "virtual_hosts": virtual_hosts},
            "http_filters": http_filters
        }
    });
    let mut listeners = vec![json!({
        "name": "main",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [manager.clone()]}]
    })];
    if let Some((tls_port, files)) = tls {
        listeners.push(json!({
            "name": "tls",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": tls_port}},
            "filter_chains": [{
                "filters": [manager],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {
                            "alpn_protocols": ["h2", "http/1.1"],
                            "tls_certificates": [{
                                "certificate_chain": {"filename": files.cert.display().to_string()},
                                "private_key": {"filename": files.key.display().to_string()}
                            }]
                        }
                    }
                }
            }]
        }));
    }
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters
        }
    });
    serde_json::to_string_pretty(&bootstrap).expect("JSON of plain values")
}

/// Knative's system-internal TLS as Kourier configures it for Envoy
/// (net-kourier `createUpstreamTLSContext`): the CA trusted, the backend's
/// name matched exactly, no SNI; TLS 1.3 as the gateway speaks it.
fn upstream_tls(tls: &crate::topology::UpstreamTls) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_3",
                    "tls_maximum_protocol_version": "TLSv1_3"
                },
                "validation_context": {
                    "trusted_ca": {"filename": tls.ca_file.display().to_string()},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": tls.name}}
                    ]
                }
            }
        }
    })
}
