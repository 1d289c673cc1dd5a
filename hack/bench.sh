#!/usr/bin/env bash
# `make bench`: every Go benchmark, then every script in hack/bench.d (iperf3,
# wrk, container-scale runs). Each prints ratios against a baseline measured in
# the same run. BENCH selects Go benchmarks (default: all); BENCHTIME sets -benchtime.
#
# After each part it prints how much CPU time the hypervisor took from this
# machine meanwhile (steal, from /proc/stat): on a VM whose host is busy,
# every figure of that part is slower by up to that much, the baselines too.
set -euo pipefail
cd "$(dirname "$0")/.."

cpu_line() { head -1 /proc/stat; }
# steal BEFORE AFTER: stolen time as a percentage of the time the CPUs were
# busy or stolen (idle time would hide it).
steal() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		split(a, x); split(b, y)
		busy = 0
		for (i = 2; i <= 9; i++) if (i != 5 && i != 6) busy += y[i] - x[i]
		st = y[9] - x[9]
		printf "%.1f", (busy > 0 ? 100 * st / busy : 0)
	}'
}
part() { # part NAME CMD...
	local s0
	s0=$(cpu_line)
	"${@:2}"
	echo "== $1: CPU stolen by the hypervisor meanwhile: $(steal "$s0" "$(cpu_line)")% of busy time"
}

part "go test -bench" bash -c 'go test -p 1 -run "^$" -bench "${BENCH:-.}" -benchtime "${BENCHTIME:-1s}" -benchmem ./... 2>&1 | tee /tmp/membrane-bench.log'
for s in hack/bench.d/*.sh; do
	[ -x "$s" ] || continue
	echo "== $s"
	part "$s" "$s"
done
