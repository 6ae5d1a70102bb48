#!/usr/bin/env bash
# The long fuzz run: AFL++ (through cargo-afl, stable Rust) on each named target, or on
# every target, for SECONDS each, one target at a time on one core. Needs
# `cargo install cargo-afl` once (README.md "Fuzzing"). Seeds come from the harness
# (`--seeds`, the same as `dura-fuzz seeds`); AFL++'s findings stay in
# target/fuzz/afl/TARGET (a rerun resumes from them).
# Prints the inputs run (AFL++'s execs_done) and the crashes of each target; exits 1
# when any target has a crash (replay one with `cargo run -p dura-fuzz -- replay
# TARGET FILE`).
#
#   bash scripts/fuzz-afl.sh 600                      # every target, 10 minutes each
#   bash scripts/fuzz-afl.sh 3600 wal_segment checkpoint_file
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:?usage: fuzz-afl.sh SECONDS [TARGET]...}
shift

(cd fuzz/afl && cargo afl build --release -q)
harness=fuzz/afl/target/release/dura-fuzz-afl
"$harness" --seeds target/fuzz/seeds

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <("$harness" --list)
fi

mkdir -p target/fuzz/afl
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
crashed=0
for target in "${targets[@]}"; do
  out=target/fuzz/afl/$target
  input=target/fuzz/seeds/$target
  # An existing output folder is resumed (`-i -`) rather than started again.
  if [ -d "$out/default/queue" ]; then input=-; fi
  cargo afl fuzz -V "$seconds" -i "$input" -o "$out" -- "$harness" "$target" \
    >"$out.log" 2>&1 || { echo "$target: afl-fuzz failed, see $out.log"; crashed=1; continue; }
  execs=$(awk -F': *' '/^execs_done/ {print $2}' "$out/default/fuzzer_stats")
  crashes=$(find "$out/default/crashes" -type f -name 'id:*' | wc -l)
  echo "$target: $execs inputs, $crashes crashes"
  if [ "$crashes" -gt 0 ]; then crashed=1; fi
done
exit "$crashed"
