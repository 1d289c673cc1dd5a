#!/usr/bin/env bash
# `make package` (after `make build`): writes dist/membrane_<version>_amd64.deb
# and dist/membrane-<version>.x86_64.rpm with nfpm (as a Go library, in
# packaging/mkpkg). Needs bin/membrane and bin/membraned.
set -euo pipefail
cd "$(dirname "$0")/.."

for b in bin/membrane bin/membraned; do
	if [ ! -x "$b" ]; then
		echo "make package: $b is missing; run 'make build' first (cmd/${b#bin/} must build)" >&2
		exit 1
	fi
done
exec go run ./packaging/mkpkg -repo . -bin bin -out dist "$@"
