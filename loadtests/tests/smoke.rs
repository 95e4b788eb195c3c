//! The harness's smoke run, so it cannot rot: every scenario for about a
//! second, gateway and direct only, against the gateway this workspace built.

use std::process::Command;

use serde_json::Value;

fn runs<'a>(report: &'a Value, scenario: &str, proxy: &str) -> Vec<&'a Value> {
    report["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["scenario"] == scenario && r["proxy"] == proxy)
        .collect()
}

fn assert_served(run: &Value) {
    assert!(run["requests"].as_u64().unwrap() > 100, "{run}");
    assert_eq!(run["errors"], 0, "{run}");
}

/// The share of `revision` in a run, percent.
fn share(run: &Value, revision: &str) -> f64 {
    run["split"][revision].as_f64().unwrap_or(0.0)
}

#[test]
fn every_scenario_runs_and_measures() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("--smoke")
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("run the harness (cargo test --workspace builds the gateway next to it)");
    assert!(status.success(), "the smoke run failed: {status}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();

    // split: direct and through the gateway; the gateway keeps the 90/10 split.
    let direct = runs(&report, "split", "direct");
    assert_served(direct[0]);
    let gw = runs(&report, "split", "gateway");
    assert_eq!(gw.len(), 1);
    assert_served(gw[0]);
    assert!(
        (share(gw[0], "hello-00001") - 90.0).abs() < 5.0,
        "{}",
        gw[0]
    );
    assert!(gw[0]["cpu_s_per_100k"].as_f64().unwrap() > 0.0);
    assert!(gw[0]["peak_rss_mib"].as_f64().unwrap() > 1.0);

    // hosts: one route and many, both served.
    let hosts = runs(&report, "hosts", "gateway");
    let routes: Vec<u64> = hosts
        .iter()
        .map(|r| r["routes"].as_u64().unwrap())
        .collect();
    assert_eq!(routes, [1, 1000]);
    hosts.iter().for_each(|r| assert_served(r));

    // rollout: every step propagated, no failures, the last step is all B.
    let rollout = &report["rollout"];
    assert_eq!(rollout["errors"], 0, "{rollout}");
    let steps = rollout["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    for s in steps {
        assert!(s["propagation_ms"].as_f64().unwrap() >= 0.0, "{s}");
    }
    assert_eq!(steps[2]["observed"]["hello-00002"].as_f64(), Some(100.0));

    // cold: the activator saw every cold request; the wake lost none.
    let cold = &report["cold"];
    assert_served(&cold["activator"]);
    assert_eq!(cold["activator_requests"], cold["activator"]["requests"]);
    assert_served(&cold["wake"]);
    assert!(cold["switch_ms"].as_f64().is_some(), "{cold}");

    // churn: endpoints changed under load without a failure.
    let churn = &report["churn"];
    assert!(churn["updates"].as_u64().unwrap() >= 4, "{churn}");
    assert_served(&churn["run"]);
    assert!(churn["added_served"].as_u64().unwrap() >= 1, "{churn}");

    // protocols: new TLS connections through the gateway's HTTPS listener
    // (h2load is not installed for the smoke run).
    let handshakes = runs(&report, "handshakes", "gateway");
    assert_eq!(handshakes.len(), 1);
    assert!(
        handshakes[0]["requests"].as_u64().unwrap() > 10,
        "{}",
        handshakes[0]
    );
    assert_eq!(handshakes[0]["errors"], 0, "{}", handshakes[0]);

    // upstream-tls: the split to TLS backends and to plaintext ones, both
    // served whole, the TLS one still 90/10.
    for proxy in ["gateway plaintext", "gateway tls"] {
        let run = runs(&report, "upstream-tls", proxy);
        assert_eq!(run.len(), 1, "{proxy}");
        assert_served(run[0]);
        assert!(
            (share(run[0], "hello-00001") - 90.0).abs() < 5.0,
            "{}",
            run[0]
        );
    }

    // hostile: every malformed-request case answered within what it allows.
    let hostile = report["hostile"].as_array().unwrap();
    assert!(hostile.len() >= 40, "{} cases", hostile.len());
    for case in hostile {
        let (answer, why) = (
            &case["answers"]["gateway"][0],
            &case["answers"]["gateway"][1],
        );
        assert!(answer.is_string() && why.is_null(), "{case}");
    }

    // kube-scale at 500: every figure produced (their values are the full
    // run's business), every KIngress Ready, each change seen.
    let k = &report["kube_scale"];
    assert_eq!(k["kingresses"], 500, "{k}");
    for figure in [
        "first_table_s",
        "all_ready_s",
        "rss_mib",
        "status_writes_per_s",
        "api_calls_per_kingress",
        "kingress_change_p50_ms",
        "endpoint_change_p99_ms",
    ] {
        assert!(k[figure].as_f64().is_some_and(|v| v > 0.0), "{figure}: {k}");
    }
    assert!(k["status_writes"].as_u64().unwrap() >= 500, "{k}");
    assert_eq!(k["kingress_change_samples"], 20, "{k}");
    assert_eq!(k["endpoint_change_samples"], 20, "{k}");
    let cold = k["cold_change_ready_ms"].as_array().unwrap();
    assert!(cold.len() == 5 && cold.iter().all(Value::is_f64), "{k}");

    assert!(report["failures"].as_array().unwrap().is_empty());
    assert!(report["checks"].as_array().unwrap().len() >= 5);
    let svg = std::fs::read_to_string(out.path().join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("gateway"));
    let text = std::fs::read_to_string(out.path().join("results.txt")).unwrap();
    assert!(text.contains("targets:"));
}
