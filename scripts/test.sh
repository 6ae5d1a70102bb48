#!/usr/bin/env bash
# The whole test gate, from a fresh clone: formatting, lints, docs, tests, and the
# bounded simulation swarm. README.md's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest (not on this machine)"
  cargo install --locked cargo-nextest
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

# Tests run optimised with debug assertions on (profile `ci` in Cargo.toml).
cargo nextest run --workspace --cargo-profile ci --no-fail-fast
