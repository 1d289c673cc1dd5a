#!/usr/bin/env bash
# The test suite: vet, every package's tests (root, real kernel, real dockerd),
# and a short run of each fuzz target. `make test` calls it after deps and
# docker-up. Must stay under 30 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

go vet ./...
# The race detector needs cgo and a C compiler: clang (hack/deps.sh installs
# it) where Go's default is missing.
cc=$(go env CC)
command -v "$cc" >/dev/null || cc=clang
# -p 1 keeps the kernel and Docker tests of different packages from racing for
# the same daemon and interfaces. Every package runs under the race detector
# but packaging, which tests built packages in a booted system and would only
# be slower for it.
CGO_ENABLED=1 CC=$cc go test -p 1 -count=1 -race -timeout 25m $(go list ./... | grep -v '/packaging') 2>&1 | tee /tmp/membrane-test.log
go test -p 1 -count=1 -timeout 15m ./packaging/... 2>&1 | tee -a /tmp/membrane-test.log
hack/fuzz.sh
