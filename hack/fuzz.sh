#!/usr/bin/env bash
# Runs every fuzz target for a short while (FUZZTIME, default 20s each).
#
# Go 1.26's fuzz coordinator can end a clean run with a bare
# "context deadline exceeded" when -fuzztime expires while a worker is still
# answering (golang/go#75804, fixed in Go 1.27). Such a run wrote no failing
# input and printed nothing but that line. It is run once more; a second
# failure of any kind, or any failure that wrote an input, fails the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-20s}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# deadline_race LOG: the run failed only with the coordinator's deadline race.
deadline_race() {
	grep -q '^    context deadline exceeded$' "$1" &&
		! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' "$1" &&
		[ "$(grep -c -- '^--- FAIL' "$1")" = 1 ]
}

for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		echo "fuzz $pkg $f for $t"
		if go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" 2>&1 | tee "$log"; then
			continue
		fi
		if deadline_race "$log"; then
			echo "fuzz $pkg $f: only Go's -fuzztime deadline race (golang/go#75804), no input written; running it once more"
			go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg"
			continue
		fi
		exit 1
	done
done
