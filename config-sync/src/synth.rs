//! Synthetic clusters of any size, for benchmarks and load tests.

use crate::model::{
    Endpoint, EndpointPort, EndpointSlice, ObjectMeta, Route, RouteStatus, Snapshot, TrafficTarget,
    REVISION_LABEL, SERVICE_NAME_LABEL, SERVICE_TYPE_LABEL,
};

/// Shape of a synthetic cluster.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Routes, each in namespace `ns-<i % 100>`.
    pub routes: usize,
    /// Revisions per route (at least 1): the first two split 90/10, every one has a tag.
    pub revisions: usize,
    /// Ready endpoints per revision.
    pub endpoints: usize,
    /// Give every revision a tag (and so a host of its own).
    pub tags: bool,
}

/// Name of route `i`.
pub fn route_name(i: usize) -> String {
    format!("route-{i}")
}

/// Namespace of route `i`.
pub fn namespace(i: usize) -> String {
    format!("ns-{}", i % 100)
}

/// External host of route `i`.
pub fn host(i: usize) -> String {
    format!("{}.{}.example.com", route_name(i), namespace(i))
}

/// `n` ready endpoints at the next addresses after `ip`.
fn ready_endpoints(n: usize, ip: &mut u32) -> Vec<Endpoint> {
    (0..n)
        .map(|_| {
            *ip += 1;
            Endpoint {
                addresses: vec![std::net::Ipv4Addr::from(*ip).to_string()],
                conditions: None,
            }
        })
        .collect()
}

/// A cluster of the given shape. Endpoint addresses are 10.x.y.z (never dialled).
pub fn cluster(shape: Shape) -> Snapshot {
    let mut s = Snapshot::default();
    let mut ip: u32 = 0x0a00_0001;
    for i in 0..shape.routes {
        let (name, ns) = (route_name(i), namespace(i));
        let mut traffic = Vec::new();
        for r in 0..shape.revisions.max(1) {
            let rev = format!("{name}-{r:05}");
            let percent = match (shape.revisions, r) {
                (1, _) => 100,
                (_, 0) => 90,
                (_, 1) => 10,
                _ => 0,
            };
            traffic.push(TrafficTarget {
                revision_name: Some(rev.clone()),
                percent: Some(percent),
                tag: shape.tags.then(|| format!("v{r}")),
                url: shape.tags.then(|| format!("http://v{r}-{}", host(i))),
            });
            let endpoints = ready_endpoints(shape.endpoints, &mut ip);
            s.slices.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{rev}-private-x")),
                    namespace: Some(ns.clone()),
                    labels: Some(
                        [
                            (REVISION_LABEL, rev),
                            (SERVICE_TYPE_LABEL, "Private".into()),
                        ]
                        .into_iter()
                        .collect(),
                    ),
                    ..ObjectMeta::default()
                },
                address_type: Some("IPv4".into()),
                ports: Some(vec![EndpointPort {
                    name: Some("http".into()),
                    port: Some(8012),
                }]),
                endpoints: Some(endpoints),
            });
        }
        s.routes.push(Route {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(ns),
                ..ObjectMeta::default()
            },
            status: Some(RouteStatus {
                url: Some(format!("http://{}", host(i))),
                traffic: Some(traffic),
            }),
        });
    }
    s
}

/// KIngresses shaped as Serving writes them for a Route with a 90/10 split and
/// a tag: an external rule (a `Knative-Serving-Tag` path before the split), a
/// cluster-local rule, and the tag's own rule. Each has three revisions'
/// Services and EndpointSlices (`endpoints` ready endpoints each).
pub fn kingress_cluster(kingresses: usize, endpoints: usize) -> Snapshot {
    let mut s = Snapshot::default();
    let mut ip: u32 = 0x0a00_0001;
    for i in 0..kingresses {
        let (name, ns) = (route_name(i), namespace(i));
        let rev = |r: usize| format!("{name}-{r:05}");
        let split = |r: usize, pct: u32| {
            serde_json::json!({"serviceName": rev(r), "serviceNamespace": ns, "servicePort": 80,
                "percent": pct,
                "appendHeaders": {"Knative-Serving-Revision": rev(r), "Knative-Serving-Namespace": ns}})
        };
        let tagged = serde_json::json!({"headers": {"Knative-Serving-Tag": {"exact": "v2"}},
            "splits": [split(2, 100)]});
        let main = serde_json::json!({"splits": [split(0, 90), split(1, 10)]});
        let value = serde_json::json!({
            "apiVersion": crate::model::kingress::API_VERSION, "kind": "Ingress",
            "metadata": {"name": name, "namespace": ns,
                "annotations": {crate::model::kingress::CLASS_ANNOTATION: crate::model::kingress::DEFAULT_CLASS}},
            "spec": {"rules": [
                {"hosts": [host(i)], "visibility": "ExternalIP",
                 "http": {"paths": [tagged.clone(), main.clone()]}},
                {"hosts": [format!("{name}.{ns}"), format!("{name}.{ns}.svc"),
                           format!("{name}.{ns}.svc.cluster.local")],
                 "visibility": "ClusterLocal", "http": {"paths": [tagged, main]}},
                {"hosts": [format!("v2-{}", host(i))], "visibility": "ExternalIP",
                 "http": {"paths": [{"splits": [split(2, 100)]}]}}]}});
        s.push_value(value);
        for r in 0..3 {
            let service = serde_json::json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": rev(r), "namespace": ns},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8012}]}});
            s.push_value(service);
            let addrs = ready_endpoints(endpoints, &mut ip);
            s.slices.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{}-x", rev(r))),
                    namespace: Some(ns.clone()),
                    labels: Some([(SERVICE_NAME_LABEL, rev(r))].into_iter().collect()),
                    ..ObjectMeta::default()
                },
                address_type: Some("IPv4".into()),
                ports: Some(vec![EndpointPort {
                    name: Some("http".into()),
                    port: Some(8012),
                }]),
                endpoints: Some(addrs),
            });
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::{build, BuildOptions, LastGood};

    #[test]
    fn synthetic_clusters_build_without_rejections() {
        let shape = Shape {
            routes: 50,
            revisions: 3,
            endpoints: 2,
            tags: true,
        };
        let (t, _) = build(
            cluster(shape),
            &BuildOptions::default(),
            &LastGood::default(),
            None,
            1,
        );
        assert!(t.rejected().is_empty(), "{:?}", t.rejected());
        assert_eq!(t.route_count(), 50);
        // Per route: 4 names for the split, 4 per tag.
        assert_eq!(t.host_count(), 50 * 4 * 4);
        assert!(t.lookup(&host(49)).is_some());
    }

    #[test]
    fn synthetic_kingresses_build_without_rejections() {
        let (t, _) = build(
            kingress_cluster(20, 2),
            &BuildOptions::default(),
            &LastGood::default(),
            None,
            1,
        );
        assert!(t.rejected().is_empty(), "{:?}", t.rejected());
        assert_eq!(t.route_count(), 20);
        // Per KIngress: its host, 3 cluster-local forms, the tag's host.
        assert_eq!(t.host_count(), 20 * 5);
        assert_eq!(t.backends().filter(|b| b.endpoints.len() == 2).count(), 60);
    }
}
