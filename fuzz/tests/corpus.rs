//! Every input in `corpus/<target>/` through its target's checks, on the
//! regular toolchain: the seeds, and whatever the fuzzer found worth keeping
//! (a crash it found, once fixed, stays here as a regression test).

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        // A failing input names itself before the check's own message.
        eprintln!("{target}: {}", path.display());
        check(&data);
        n += 1;
    }
    assert!(n > 0, "no corpus for {target} in {}", dir.display());
}

#[test]
fn host_corpus() {
    replay("host", fuzz::host);
}

#[test]
fn snapshot_corpus() {
    replay("snapshot", fuzz::snapshot);
}

#[test]
fn kingress_corpus() {
    replay("kingress", fuzz::kingress);
}

#[test]
fn probe_hash_corpus() {
    replay("probe_hash", fuzz::probe_hash);
}

#[test]
fn response_head_corpus() {
    replay("response_head", fuzz::response_head);
}

#[test]
fn chunked_corpus() {
    replay("chunked", fuzz::chunked);
}

#[test]
fn proxy_header_corpus() {
    replay("proxy_header", fuzz::proxy_header);
}

/// The seeds exercise what they are meant to: the full KIngress decodes and
/// builds a routed table, and the snapshot seeds parse (a seed that only
/// ever fails to parse would teach the fuzzer nothing).
#[test]
fn the_seeds_reach_the_table() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for seed in ["seed-kingress.yaml", "seed-routes.yaml", "seed-demo.yaml"] {
        let text = std::fs::read_to_string(dir.join("snapshot").join(seed)).unwrap();
        let snapshot = config_sync::sources::file::parse(&text).unwrap();
        let (table, _) = config_sync::build(
            snapshot,
            &config_sync::BuildOptions::default(),
            &config_sync::LastGood::default(),
            None,
            1,
        );
        assert!(table.route_count() > 0, "{seed}: {:?}", table.rejected());
    }
    let json = std::fs::read(dir.join("kingress").join("seed-full.json")).unwrap();
    let ing = config_sync::model::kingress::decode(serde_json::from_slice(&json).unwrap()).unwrap();
    assert_eq!(ing.spec.rules.len(), 2);
}
