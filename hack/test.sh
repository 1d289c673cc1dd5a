#!/usr/bin/env bash
# The test suite: vet, every package's tests (root, real kernel, real dockerd),
# and a short run of each fuzz target. `make test` calls it after deps and
# docker-up. Must stay under 30 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

go vet ./...
# -p 1 keeps the kernel and Docker tests of different packages from racing for
# the same daemon and interfaces.
go test -p 1 -count=1 -timeout 25m ./... 2>&1 | tee /tmp/membrane-test.log
hack/fuzz.sh
