//! Scenario: external authorization. The split route of `split`, every
//! request checked with one gRPC authorization server (Envoy's
//! `Authorization/Check`, allowing all and setting a header) before it is
//! forwarded; the gateway (`--extauthz-host`) against Envoy configured as
//! Kourier configures its `ext_authz` filter, keep-alive clients, and the
//! gateway without the check for its cost.

use super::{hello, Ctx, A, B};
use crate::peers::{Kind, Launch};
use crate::topology::Topology;

/// Run the scenario.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let a = ctx.backends(A, 2)?;
    let b = ctx.backends(B, 2)?;
    // Two threads, as the backends' default: it answers for both proxies alike.
    let server = crate::authz::start(2)?;
    let plain = Topology {
        routes: vec![hello(&[&a[0], &a[1]], &[&b[0], &b[1]], 90, 10)],
        upstream_tls: None,
        authz: None,
    };
    let checked = Topology {
        authz: Some(server.addr),
        ..plain.clone()
    };
    let host = plain.routes[0].host();
    let threads = ctx.max_threads();
    for (kind, bin) in ctx.proxies() {
        if !matches!(kind, Kind::Gateway | Kind::Envoy) {
            continue;
        }
        let mut sides = vec![(&checked, "authz")];
        if kind == Kind::Gateway {
            sides.push((&plain, "none"));
        }
        for (topology, label) in sides {
            let name = format!("{} {label}", kind.name());
            ctx.progress(format!("authz: {name}, {threads} threads"));
            let launch = Launch::plain(kind, bin, topology, threads);
            let Some(proxy) = ctx.start(&launch, &host, &format!("authz: {name}")) else {
                continue;
            };
            ctx.measure_conns(&proxy, &host, "authz", &name, threads);
        }
    }
    Ok(())
}
