//! Instructions per proxied request under `valgrind --tool=callgrind`, which
//! counts the same on a busy shared machine as on a quiet one.
//!
//! valgrind's live control (`callgrind_control`) needs to interrupt a process
//! blocked in `epoll_wait`, which this machine does not allow; so each proxy
//! runs twice, a short load and a long one, and the cost of a request is the
//! difference of the two runs' totals over the difference of their request
//! counts. Start-up, warm-up and shutdown cancel out.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

/// `valgrind` with callgrind's options, writing one file per process (nginx
/// forks its worker) into `dir`; the proxy's command line follows.
pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--trace-children=yes", "--quiet"])
        .arg(format!(
            "--callgrind-out-file={}/callgrind.out.%p",
            dir.display()
        ));
    cmd
}

/// Whether valgrind can be run.
pub fn available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The instructions counted in one callgrind output: its `totals:` line (or
/// `summary:`, which older versions write instead).
pub fn parse_total(text: &str) -> Option<u64> {
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    line("totals:").or_else(|| line("summary:"))
}

/// The instructions of every process of one run: the sum over the
/// `callgrind.out.*` files in `dir`.
pub fn total(dir: &Path) -> anyhow::Result<u64> {
    let mut sum = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let is_output = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("callgrind.out."));
        if !is_output {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        sum +=
            parse_total(&text).with_context(|| format!("{} has no totals line", path.display()))?;
        files += 1;
    }
    anyhow::ensure!(files > 0, "no callgrind output in {}", dir.display());
    Ok(sum)
}

/// One run under callgrind: what it counted and how many requests it served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Instructions, every process of the proxy together.
    pub instructions: u64,
    /// Requests sent through it (answered or not).
    pub requests: u64,
}

/// Instructions per request between a short and a long run.
pub fn per_request(short: Sample, long: Sample) -> anyhow::Result<f64> {
    anyhow::ensure!(
        long.requests > short.requests,
        "the long run served {} requests, the short one {}: no difference to measure",
        long.requests,
        short.requests
    );
    anyhow::ensure!(
        long.instructions > short.instructions,
        "the long run counted fewer instructions ({}) than the short one ({})",
        long.instructions,
        short.instructions
    );
    Ok((long.instructions - short.instructions) as f64 / (long.requests - short.requests) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_totals_line() {
        let out = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 7795084\n\nfn=(1) main\n12 5\ntotals: 7797687\n";
        assert_eq!(parse_total(out), Some(7_797_687));
        assert_eq!(parse_total("events: Ir\nsummary: 42\n"), Some(42));
        assert_eq!(parse_total("events: Ir\nfn=(1) main\n"), None);
    }

    #[test]
    fn sums_every_process_of_a_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("callgrind.out.10"), "totals: 1000\n").unwrap();
        std::fs::write(dir.path().join("callgrind.out.11"), "totals: 234\n").unwrap();
        std::fs::write(dir.path().join("proxy.log"), "totals: 99999\n").unwrap();
        assert_eq!(total(dir.path()).unwrap(), 1234);
        std::fs::write(dir.path().join("callgrind.out.12"), "cut short").unwrap();
        let err = total(dir.path()).unwrap_err().to_string();
        assert!(err.contains("callgrind.out.12 has no totals line"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        assert!(
            total(empty.path()).is_err(),
            "no output is an error, not zero"
        );
    }

    #[test]
    fn a_request_costs_the_difference_over_the_difference() {
        let short = Sample {
            instructions: 50_000_000 + 1_000 * 30_000,
            requests: 1_000,
        };
        let long = Sample {
            instructions: 50_000_000 + 4_000 * 30_000,
            requests: 4_000,
        };
        assert_eq!(per_request(short, long).unwrap(), 30_000.0);
        assert!(per_request(long, short).is_err());
        assert!(per_request(short, short).is_err());
    }
}
