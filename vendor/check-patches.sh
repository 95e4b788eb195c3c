#!/usr/bin/env bash
# Check that vendor/patches/*.diff, applied in order to the released crates
# laid out as in the upstream repository (pingora-core/src/..., the layout of
# cloudflare/pingora at its 0.9.1 tag), give exactly the sources vendored here.
# Needs curl and patch; downloads the three crates from crates.io.
set -euo pipefail
cd "$(dirname "$0")"
version=0.9.1
crates=(pingora-core pingora-http pingora-proxy)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for c in "${crates[@]}"; do
  curl -sSfL "https://static.crates.io/crates/$c/$c-$version.crate" | tar -xz -C "$work"
  mv "$work/$c-$version" "$work/$c"
done
for p in patches/*.diff; do
  echo "applying $p"
  patch -d "$work" -p1 -s --no-backup-if-mismatch <"$p"
done
for c in "${crates[@]}"; do
  diff -r "$work/$c/src" "$c/src"
done
echo "every patch applies, and together they give vendor/*/src exactly"
