#!/usr/bin/env bash
# `make bench`: every Go benchmark, then every script in hack/bench.d (iperf3,
# wrk, container-scale runs). Each prints ratios against a baseline measured in
# the same run. BENCH selects Go benchmarks (default: all); BENCHTIME sets -benchtime.
set -euo pipefail
cd "$(dirname "$0")/.."

go test -p 1 -run '^$' -bench "${BENCH:-.}" -benchtime "${BENCHTIME:-1s}" -benchmem ./... 2>&1 | tee /tmp/membrane-bench.log
for s in hack/bench.d/*.sh; do
	[ -x "$s" ] || continue
	echo "== $s"
	"$s"
done
