#!/usr/bin/env bash
# Wall time of offline `cargo xtask validate` over the default matrix: builds
# the xtask once, then runs the binary N times (default 10) and prints every
# time and the median, in seconds. Usage: bench/validate-time.sh [N]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-10}

cargo build --quiet --package xtask
xtask=${CARGO_TARGET_DIR:-target}/debug/xtask

times=()
for ((i = 0; i < runs; i++)); do
  start=$(date +%s%N)
  "$xtask" validate >/dev/null
  end=$(date +%s%N)
  times+=("$(((end - start) / 1000000))")
done

mapfile -t sorted < <(printf '%s\n' "${times[@]}" | sort -n)
median=${sorted[$((runs / 2))]}
echo "validate (offline, default matrix), ${runs} runs, ms: ${times[*]}"
echo "median: ${median} ms ($(nproc) cores)"
