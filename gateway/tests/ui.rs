//! The `/ui` split view in a real browser: headless Chromium loads the page
//! from a running gateway under load, and the test reads the split it
//! rendered from the DOM. `./dev.sh test` installs Debian's `chromium`;
//! `CHROMIUM` names another binary.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Run headless Chromium on `url` with `args`, bounded in time; its stdout.
async fn browse(url: &str, args: &[&str], profile: &Path) -> String {
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install Debian's chromium (./dev.sh test does) or set CHROMIUM",
                chromium()
            )
        });
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text of the cell of `class` in the row of `revision` of the route
/// section `route`, in the DOM Chromium dumped.
fn cell(dom: &str, route: &str, revision: &str, class: &str) -> String {
    let section = dom
        .split("<section class=\"route\"")
        .find(|s| s.starts_with(&format!(" data-route=\"{route}\"")))
        .unwrap_or_else(|| panic!("route {route} not rendered:\n{dom}"));
    let row = section
        .split("<tr ")
        .find(|r| r.starts_with(&format!("data-revision=\"{revision}\"")))
        .unwrap_or_else(|| panic!("revision {revision} not rendered:\n{section}"));
    let open = format!("<td class=\"{class}\">");
    let start = row
        .find(&open)
        .unwrap_or_else(|| panic!("no {class} in {row}"))
        + open.len();
    row[start..start + row[start..].find('<').unwrap()].to_owned()
}

fn percent(text: &str) -> f64 {
    text.trim_end_matches('%')
        .parse()
        .unwrap_or_else(|_| panic!("{text:?}"))
}

/// `n` requests for the route over 4 connections, in the background.
fn load(gw: std::net::SocketAddr, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let counts = count_bodies(gw, "web.ns.example.com", n, 4).await;
        assert_eq!(counts.values().sum::<usize>(), n);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_the_served_split_beside_the_configured_one() {
    let (a, b) = (Backend::start("rev-a").await, Backend::start("rev-b").await);
    let snap = |pa: i64, pb: i64| {
        route("ns", "web", &[("rev-a", pa, None), ("rev-b", pb, None)])
            + &slice("ns", "rev-a", &[a.addr])
            + &slice("ns", "rev-b", &[b.addr])
    };
    let gw = Gateway::start(&snap(90, 10), closed()).await;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/ui", gw.admin);
    // The window starts at the first poll.
    assert_eq!(gw.admin("/ui/data").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    load(gw.http, 2_000).await.unwrap();
    // Loaded while more traffic flows.
    let traffic = load(gw.http, 2_000);
    let dom = browse(&url, &["--dump-dom"], profile.path()).await;
    traffic.await.unwrap();
    assert_eq!(cell(&dom, "ns/web", "rev-a", "configured"), "90%");
    assert_eq!(cell(&dom, "ns/web", "rev-b", "configured"), "10%");
    let (served_a, served_b) = (
        percent(&cell(&dom, "ns/web", "rev-a", "served")),
        percent(&cell(&dom, "ns/web", "rev-b", "served")),
    );
    assert!((88.0..=92.0).contains(&served_a), "{served_a}");
    assert!((8.0..=12.0).contains(&served_b), "{served_b}");

    // The canary steps to 50/50: the configured split follows at once, the
    // served one moves towards it as the minute fills.
    gw.reload(&snap(50, 50)).await;
    load(gw.http, 4_000).await.unwrap();
    let screenshot = profile.path().join("ui.png");
    let dom = browse(&url, &["--dump-dom"], profile.path()).await;
    assert_eq!(cell(&dom, "ns/web", "rev-a", "configured"), "50%");
    assert_eq!(cell(&dom, "ns/web", "rev-b", "configured"), "50%");
    let served_b_after = percent(&cell(&dom, "ns/web", "rev-b", "served"));
    assert!(
        served_b_after > served_b + 15.0 && served_b_after < 50.0,
        "{served_b} -> {served_b_after}"
    );
    // And it draws: a screenshot (docs/ui.png was taken this way, with
    // UI_SCREENSHOT naming where to keep it).
    browse(
        &url,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1100,520",
        ],
        profile.path(),
    )
    .await;
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if let Ok(keep) = std::env::var("UI_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).unwrap();
    }
}
