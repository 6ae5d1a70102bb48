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

# Fuzz targets (fuzz/, README.md "Fuzzing"): every decoder of bytes from outside, on its
# seeds and on deterministic mutations, at most 100,000 inputs and 2 s per target (about
# 50 s in all); prints the inputs run per target, and any failing input as hex with the
# command that replays it. The test build above linked this binary (cargo builds a
# package's binaries for its integration tests); `cargo run -p dura-fuzz` would build the
# engine once more, with other features.
[ -x target/ci/dura-fuzz ] || cargo build --profile ci -q -p dura-fuzz
target/ci/dura-fuzz run --iterations 100000 --seconds 2

# Simulation swarm (engine/src/sim): every seed runs a whole cluster - ordering protocol,
# durability coordinator and a real dura-wal per replica over a simulated disk - with
# loss, duplication, delay, partitions, crash/restart, torn writes, crashes during
# recovery, a failed write, a slow disk and up to f Byzantine replicas; crash mode also
# with crashes of every replica at once (--total-crash), in which up to f replicas lose
# their disks for good (5 replicas: up to 2). Any failing seed prints the command that
# replays it. Nightly: the same with --seeds 100000 per line. The last two lines run the
# tuple space (--service tuplespace: blocking rd/in, leases, cancels) as the service,
# its history checked against a replay of the agreed order (engine/src/sim/tuplespace.rs).
cargo run --profile ci -q -p dura-engine --bin dura-sim -- --seeds 2000 --mode bft --replicas 4
cargo run --profile ci -q -p dura-engine --bin dura-sim -- --seeds 500 --mode bft --replicas 7
cargo run --profile ci -q -p dura-engine --bin dura-sim -- --seeds 1000 --mode crash --replicas 3
cargo run --profile ci -q -p dura-engine --bin dura-sim -- --seeds 300 --mode crash --replicas 5
cargo run --profile ci -q -p dura-engine --bin dura-sim -- --seeds 800 --mode crash --replicas 3 --total-crash
cargo run --profile ci -q -p dura-engine --bin dura-sim -- --seeds 150 --mode crash --replicas 5 --total-crash
# BFT with crashes of every replica: a replica that alone (with fewer than f others) logged
# an agreement discards it and comes back by state transfer; in one run in three without
# a Byzantine replica a disk is replaced in the crash of all, and its replica comes back
# by state transfer saying its disk was lost. Runs stopped at the stated limit (the newest
# agreement on f or fewer correct disks, or a Byzantine claim above it, while a replica
# is Byzantine or down, ARCHITECTURE.md "votes are not persisted"; about 1 seed in 200
# with 4 replicas, 1 in 130 with 7) are listed as LIMIT and do not fail it; any other
# stall does.
cargo run --profile ci -q -p dura-engine --bin dura-sim -- --seeds 600 --mode bft --replicas 4 --total-crash
cargo run --profile ci -q -p dura-engine --bin dura-sim -- --seeds 200 --mode bft --replicas 7 --total-crash
cargo run --profile ci -q -p dura-engine --bin dura-sim -- --seeds 1500 --mode bft --replicas 4 --service tuplespace
cargo run --profile ci -q -p dura-engine --bin dura-sim -- --seeds 2500 --mode crash --replicas 3 --total-crash --service tuplespace
# Seeds that failed once and were fixed (commit messages and ARCHITECTURE.md name each),
# replayed on every run: a schedule moves when the protocol changes, so these guard the
# code as it is, and the lines above keep looking for new ones.
for seed_config in "4928 crash 3" "57841 crash 3" "36338 crash 3 --total-crash" \
  "4019 crash 5 --total-crash" "17004 bft 4 --total-crash" "32281 bft 4 --total-crash" \
  "1512 bft 4 --total-crash" "1960 bft 4 --total-crash" "15266 bft 4 --total-crash"; do
  set -- $seed_config
  seed=$1 mode=$2 replicas=$3
  shift 3
  cargo run --profile ci -q -p dura-engine --bin dura-sim -- --seeds 1 --seed-start "$seed" \
    --mode "$mode" --replicas "$replicas" "$@"
done
