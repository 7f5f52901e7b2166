#!/usr/bin/env bash
# Baseline (c) of `cargo xtask bench`: the plain shell way, one `packer build`
# per var file, all started with & and collected with wait. Each build's
# machine-readable output goes next to its var file as <build>.log.
# Usage: bench/packer-loop.sh TEMPLATE VAR_FILE...
set -euo pipefail

template=$1
shift

pids=()
for var_file in "$@"; do
  packer build -machine-readable -color=false -only=amazon-ebs.api_only -var-file="$var_file" "$template" \
    >"${var_file%.pkrvars.json}.log" 2>&1 &
  pids+=("$!")
done

failed=0
for pid in "${pids[@]}"; do
  wait "$pid" || failed=$((failed + 1))
done
if ((failed > 0)); then
  echo "packer-loop: $failed of $# builds failed" >&2
  exit 1
fi
