#!/usr/bin/env bash
# Runtime discovery latencies (make bench runs every script in hack/bench.d):
#   - `docker start` returned -> endpoint event with veth and addresses,
#     p50/p99 over 100 containers (target p99 <= 50 ms), with Docker's own
#     start event as the same-run baseline (p99-vs-raw);
#   - veth enslaved to a managed bridge -> link watcher event, p50/p99 over
#     100 veths (target p99 <= 5 ms), against a bare rtnetlink subscriber.
# Needs root and a running dockerd (hack/docker-up.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/go/bin:$PATH

go test -p 1 -count=1 -run '^$' -bench 'BenchmarkVethToLinkEvent|BenchmarkDockerStartToEndpoint' \
	-benchtime 100x ./runtime/linkwatch ./runtime/docker 2>&1 | tee /tmp/membrane-bench-runtime.log
