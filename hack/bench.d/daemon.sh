#!/usr/bin/env bash
# membraned at scale with real dockerd and containers:
#   container start -> enforced, p50/p99 over 50 containers (target p99 <= 100 ms)
#   policy edit -> enforced on 200 endpoints with 1,000 policies (target <= 200 ms)
#   RSS with 200 endpoints and 1,000 policies (target <= 100 MiB)
#   idle CPU over 60 s (target < 0.5 % of a core)
# Each figure is printed with a baseline measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
MEMBRANE_BENCH_DAEMON=1 go test -p 1 -count=1 -timeout 30m -run '^$' -bench 'BenchmarkDaemon' -benchtime 1x ./daemon/e2e 2>&1 | grep -v '^        time=' | tee /tmp/membrane-bench-daemon.log
