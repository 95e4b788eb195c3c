//! deploy/: every manifest validated offline against the Kubernetes schemas
//! (`kubernetes-validate`, installed by `./dev.sh test`), and the invariants
//! that keep a rollout safe.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["base", "knative", "examples"]
        .iter()
        .flat_map(|d| std::fs::read_dir(deploy().join(d)).unwrap())
        .map(|e| e.unwrap().path())
        // Objects only: not the kustomization, not the config-network patch.
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && !p.ends_with("kustomization.yaml")
                && !p.ends_with("config-network.yaml")
        })
        .collect();
    files.sort();
    files
}

fn validate(files: &[PathBuf], version: &str) -> std::process::Output {
    // As a module: no dependence on where pip put the script.
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "-k",
            version,
        ])
        .args(files)
        .output()
        .expect("python3 is needed to validate deploy/");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("No module named kubernetes_validate"),
        "kubernetes-validate is missing: run ./dev.sh test, which installs it (pip install kubernetes-validate)"
    );
    out
}

#[test]
fn every_manifest_passes_strict_schema_validation() {
    let files = manifests();
    assert!(files.len() >= 8, "{files:?}");
    // 1.28: nothing newer is needed (no preStop sleep, which needs 1.30).
    for version in ["1.28.0", "1.31.0", "1.37.0"] {
        let out = validate(&files, version);
        assert!(
            out.status.success(),
            "Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_validator_rejects_a_broken_manifest() {
    // Proves the check above can fail.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(deploy().join("base/hpa.yaml"))
        .unwrap()
        .replace("minReplicas: 2", "minReplicas: two");
    assert!(text.contains("minReplicas: two"));
    std::fs::write(&bad, text).unwrap();
    assert!(!validate(&[bad], "1.37.0").status.success());
}

#[test]
fn kustomization_lists_every_base_manifest() {
    let k: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(deploy().join("base/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let mut listed: Vec<String> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut present: Vec<String> = manifests()
        .iter()
        .filter(|p| p.parent().unwrap().ends_with("base"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(listed, present);
}

fn arg_duration(args: &[String], flag: &str) -> Duration {
    let v = args
        .iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
        .unwrap_or_else(|| panic!("{flag} not set"));
    humantime::parse_duration(v).unwrap()
}

#[test]
fn deployment_drains_within_its_grace_period_and_runs_locked_down() {
    let d: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(deploy().join("base/deployment.yaml")).unwrap(),
    )
    .unwrap();
    let spec = &d["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let args: Vec<String> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap());
    // The gateway itself keeps serving for --shutdown-grace after SIGTERM:
    // no preStop sleep, which needs Kubernetes 1.30.
    assert!(c["lifecycle"].is_null(), "{:?}", c["lifecycle"]);
    assert!(arg_duration(&args, "--shutdown-grace") >= Duration::from_secs(10));
    let drain = arg_duration(&args, "--shutdown-grace")
        + arg_duration(&args, "--shutdown-timeout")
        + Duration::from_secs(gateway::server::RUNTIME_TEARDOWN_SECONDS);
    assert!(
        drain < grace,
        "drain {drain:?} must end before SIGKILL at {grace:?}"
    );

    // The HPA owns the replica count; one here would reset it on every apply.
    assert!(d["spec"]["replicas"].is_null());
    let hpa: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(deploy().join("base/hpa.yaml")).unwrap())
            .unwrap();
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    assert_eq!(
        spec["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    for r in ["requests", "limits"] {
        assert!(
            c["resources"][r]["cpu"].as_str().is_some()
                && c["resources"][r]["memory"].as_str().is_some(),
            "{r}"
        );
    }
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    // The kubelet's probes and scrapers reach the probes listener, which
    // shows no table; the admin listener (the table, /ui) is loopback only.
    assert!(
        args.contains(&"--probes=0.0.0.0:9091".to_owned())
            && args.contains(&"--admin=127.0.0.1:9090".to_owned()),
        "{args:?}"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"].as_str(), Some("probes"));
    }
    // Installable in any namespace: the Lease and Services follow the pod's
    // namespace (downward API), and no flag names a namespace of its own.
    let env = c["env"].as_sequence().unwrap();
    assert!(env.iter().any(|e| e["name"] == "POD_NAMESPACE"
        && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"));
    for flag in ["--lease", "--public-service", "--private-service"] {
        assert!(
            !args.iter().any(|a| a.starts_with(flag)),
            "{flag} in {args:?}"
        );
    }
    // The manifest's flags must parse with this binary's CLI.
    use clap::Parser;
    let cli = gateway::cli::Cli::try_parse_from(
        std::iter::once("gateway".to_owned()).chain(args.clone()),
    )
    .unwrap_or_else(|e| panic!("deployment args do not parse: {e}"));
    let gateway::cli::Command::Serve(serve) = cli.command else {
        panic!("not serve")
    };
    assert!(serve.kube && serve.validate().is_ok());
}

/// The ClusterRole grants list and watch on every resource the KIngress source
/// (the Deployment's) and the Route source watch, and writes only KIngress status.
#[test]
fn rbac_covers_what_the_sources_watch_and_writes_only_status() {
    let text = std::fs::read_to_string(deploy().join("base/rbac.yaml")).unwrap();
    let role = serde_norway::Deserializer::from_str(&text)
        .map(|d| <serde_norway::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"].as_str() == Some("ClusterRole"))
        .expect("a ClusterRole");
    let strings = |v: &serde_norway::Value| -> Vec<String> {
        v.as_sequence()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let mut granted: Vec<(String, String, String)> = Vec::new();
    for rule in role["rules"].as_sequence().unwrap() {
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    granted.push((g.clone(), r.clone(), v));
                }
            }
        }
    }
    let has = |g: &str, r: &str, v: &str| granted.contains(&(g.into(), r.into(), v.into()));
    for (group, resource) in [
        ("networking.internal.knative.dev", "ingresses"),
        ("", "services"),
        ("", "secrets"),
        ("discovery.k8s.io", "endpointslices"),
        ("serving.knative.dev", "routes"),
    ] {
        for verb in ["list", "watch"] {
            assert!(has(group, resource, verb), "{verb} {group}/{resource}");
        }
    }
    assert!(has(
        "networking.internal.knative.dev",
        "ingresses/status",
        "update"
    ));
    let writes: Vec<_> = granted
        .iter()
        .filter(|(_, _, v)| !matches!(v.as_str(), "get" | "list" | "watch"))
        .map(|(_, r, _)| r.as_str())
        .collect();
    assert!(
        writes.iter().all(|r| *r == "ingresses/status"),
        "{writes:?}"
    );
    // The trust bundle's ConfigMaps: read in Knative's namespace only.
    let text = std::fs::read_to_string(deploy().join("knative/trust-bundle-rbac.yaml")).unwrap();
    let trust = serde_norway::Deserializer::from_str(&text)
        .map(|d| <serde_norway::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| {
            d["kind"].as_str() == Some("Role")
                && d["metadata"]["namespace"].as_str() == Some("knative-serving")
        })
        .expect("a Role in knative-serving");
    let rules = trust["rules"].as_sequence().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0]["resources"]), ["configmaps"]);
    assert_eq!(strings(&rules[0]["verbs"]), ["get", "list", "watch"]);
}

/// The config-network file is a merge patch naming this gateway's class, not
/// a ConfigMap: `kubectl apply` of it fails rather than taking Serving's
/// ConfigMap over. The base labels what Knative's tooling selects on, not
/// the (immutable) selectors.
#[test]
fn config_network_is_a_patch_and_the_base_carries_knative_labels() {
    let patch: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(deploy().join("knative/config-network.yaml")).unwrap(),
    )
    .unwrap();
    assert!(patch["kind"].is_null() && patch["metadata"].is_null());
    assert_eq!(
        patch["data"]["ingress-class"].as_str(),
        Some(config_sync::model::kingress::DEFAULT_CLASS)
    );
    let k: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(deploy().join("base/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let labels = &k["labels"][0];
    assert_eq!(labels["includeSelectors"].as_bool(), Some(false));
    for key in [
        "networking.knative.dev/ingress-provider",
        "app.kubernetes.io/component",
        "app.kubernetes.io/version",
    ] {
        assert!(labels["pairs"][key].as_str().is_some(), "{key}");
    }
    assert_eq!(
        labels["pairs"]["app.kubernetes.io/version"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

/// The image build context leaves out what the build does not need, and the
/// image declares every listener.
#[test]
fn the_image_build_is_small_and_exposes_every_listener() {
    let ignore = std::fs::read_to_string(deploy().join("../.dockerignore")).unwrap();
    for entry in ["target/", ".git/"] {
        assert!(ignore.lines().any(|l| l == entry), "{entry}");
    }
    let dockerfile = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let expose = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .unwrap();
    let ports: Vec<&str> = expose.split_whitespace().collect();
    assert_eq!(ports, ["8080", "8081", "8443", "8444", "9091"]);
}

/// `deploy/render.py` makes the one file users apply: every object of the
/// base and the trust bundle's Role, moved to the namespace asked for, the
/// image pinned as given, the version labels on each, and the result valid
/// against the Kubernetes schemas. It reads the base, so it cannot drift.
#[test]
fn the_rendered_release_file_is_the_base_in_any_namespace() {
    let image = "registry.example.com/knative-gateway@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let out = Command::new("python3")
        .arg(deploy().join("render.py"))
        .args(["--image", image, "--namespace", "edge-system"])
        .output()
        .expect("python3 runs deploy/render.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("knative-gateway.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    for version in ["1.28.0", "1.37.0"] {
        let v = validate(std::slice::from_ref(&file), version);
        assert!(
            v.status.success(),
            "Kubernetes {version}:\n{}",
            String::from_utf8_lossy(&v.stdout)
        );
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let objects: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| <serde_norway::Value as serde::Deserialize>::deserialize(d).unwrap())
        .collect();
    // Exactly the base's objects and the trust bundle's Role and binding.
    let identity = |o: &serde_norway::Value| {
        format!(
            "{}/{}",
            o["kind"].as_str().unwrap(),
            o["metadata"]["name"].as_str().unwrap()
        )
    };
    let mut rendered: Vec<String> = objects.iter().map(identity).collect();
    let mut sources: Vec<String> = manifests()
        .iter()
        .filter(|p| p.parent().unwrap().ends_with("base") || p.ends_with("trust-bundle-rbac.yaml"))
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            serde_norway::Deserializer::from_str(&text)
                .map(|d| <serde_norway::Value as serde::Deserialize>::deserialize(d).unwrap())
                .map(|o| identity(&o))
                .collect::<Vec<_>>()
        })
        .map(|id| id.replace("Namespace/knative-gateway", "Namespace/edge-system"))
        .collect();
    rendered.sort();
    sources.sort();
    assert_eq!(rendered, sources);
    for o in &objects {
        let kind = o["kind"].as_str().unwrap();
        let ns = o["metadata"]["namespace"].as_str();
        match kind {
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" => assert_eq!(ns, None, "{kind}"),
            _ if o["metadata"]["name"] == "knative-gateway-trust-bundle" => {
                assert_eq!(ns, Some("knative-serving"), "{kind}")
            }
            _ => assert_eq!(ns, Some("edge-system"), "{kind}"),
        }
        for s in o["subjects"].as_sequence().into_iter().flatten() {
            assert_eq!(s["namespace"].as_str(), Some("edge-system"), "{kind}");
        }
        let labels = &o["metadata"]["labels"];
        assert_eq!(
            labels["app.kubernetes.io/version"].as_str(),
            Some(env!("CARGO_PKG_VERSION")),
            "{kind}"
        );
        assert!(labels["networking.knative.dev/ingress-provider"]
            .as_str()
            .is_some());
    }
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str(),
        Some(image)
    );
}
