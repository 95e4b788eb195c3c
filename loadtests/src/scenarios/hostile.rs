//! Scenario: the malformed and request-smuggling cases of
//! [`crate::hostile`] sent to every proxy in front of the same recording
//! backend, each proxy's answers side by side, each marked safe or not.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Ctx;
use crate::hostile::{self, Recorder};
use crate::peers::Launch;
use crate::report::{Check, HostileCase};
use crate::topology::{Revision, Route, Topology};

/// How long the slowloris case trickles its head: past the gateway's default
/// 10 s header timeout.
const TRICKLE: Duration = Duration::from_secs(12);

/// Run the scenario.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let recorder = rt.block_on(Recorder::start())?;
    let topo = Topology {
        routes: vec![Route {
            namespace: "default".into(),
            name: "hostile".into(),
            revisions: vec![Revision {
                name: "hostile-00001".into(),
                percent: 100,
                endpoints: vec![recorder.addr],
            }],
        }],
        upstream_tls: None,
        authz: None,
    };
    let host = topo.routes[0].host();
    let cases = hostile::cases(&host, Some(TRICKLE));
    let mut rows: Vec<HostileCase> = cases
        .iter()
        .map(|c| HostileCase {
            case: c.name.into(),
            what: c.what.into(),
            answers: BTreeMap::new(),
        })
        .collect();
    for (kind, bin) in ctx.proxies() {
        ctx.progress(format!(
            "hostile: {} cases against {}",
            cases.len(),
            kind.name()
        ));
        let launch = Launch::plain(kind, bin, &topo, 1);
        let Some(proxy) = ctx.start(&launch, &host, &format!("hostile: {}", kind.name())) else {
            continue;
        };
        // The cases' paths are the same for every proxy.
        recorder.clear();
        let outcomes = rt.block_on(hostile::run_all(proxy.addr, &recorder, &cases));
        for ((case, outcome), row) in cases.iter().zip(&outcomes).zip(&mut rows) {
            let verdict = hostile::verdict(case, outcome);
            row.answers
                .insert(kind.name().to_owned(), (outcome.cell(), verdict.err()));
        }
        proxy.stop(Duration::from_secs(10))?;
    }
    let unsafe_cases: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let (_, why) = r.answers.get("gateway")?;
            why.as_ref().map(|w| format!("{}: {w}", r.case))
        })
        .collect();
    ctx.report.checks.push(Check {
        target: format!("hostile: every one of {} cases safe (gateway)", rows.len()),
        measured: if unsafe_cases.is_empty() {
            "all safe".into()
        } else {
            unsafe_cases.join("; ")
        },
        met: unsafe_cases.is_empty(),
    });
    ctx.report.hostile = rows;
    Ok(())
}
