#!/usr/bin/env bash
# Times the docker platform against the AMI platform for the same images,
# side by side in one run: `build-amis --local` of the spark-3.5 preset's base
# and Spark 3.5.3 for x86_64, provisioned and smoke-tested, caches hot. Runs
# alternate (docker, AMI, docker, ...) through farm-bench, which reports the
# docker/AMI ratio pair by pair; without farm-bench, bash's `time` per run.
#
# Usage: bench/platforms.sh [PAIRS]   (default 2; about 5 minutes a pair)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pairs=${1:-2}
cargo build -q -p xtask
xtask=$PWD/target/debug/xtask
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common=(build-amis --local --preset spark-3.5 --arch x86_64 --region us-east-1)
docker_run=("$xtask" "${common[@]}" --platform docker --images-list "$out/images-list")
ami_run=("$xtask" "${common[@]}" --ami-list "$out/ami-list")

# Once each first, so that both mirrors and rootfs are built before timing.
"${ami_run[@]}" >/dev/null 2>&1
"${docker_run[@]}" >/dev/null 2>&1

if command -v farm-bench >/dev/null; then
  farm-bench -n "$pairs" --warmup 0 --timeout 3600 --vs "${ami_run[*]}" -- "${docker_run[@]}"
else
  for ((i = 1; i <= pairs; i++)); do
    echo "pair $i: AMI platform"
    time "${ami_run[@]}" >/dev/null 2>&1
    echo "pair $i: docker platform"
    time "${docker_run[@]}" >/dev/null 2>&1
  done
fi
