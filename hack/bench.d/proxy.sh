#!/usr/bin/env bash
# L7 proxy benchmark (`make bench`): the built-in engine vs direct, same run,
# on loopback. wrk keep-alive GETs of a small response (requests/s ratio,
# target >= 0.6); a fixed 1,000 requests/s load for the added p50/p99 latency
# (target p99 <= 1 ms added) and the proxy's CPU per 1,000 requests/s (target
# <= 0.1 core, from /proc/PID/stat of the proxy process); and new connections
# per second (wrk with Connection: close) through the proxy vs direct.
# The CPU line has a baseline measured in the same run: the upstream, a bare
# Go net/http server returning the same 24 bytes, and its CPU per 1,000
# requests/s under the direct load. An informational last part repeats the
# keep-alive and 1,000 requests/s runs against a second proxy process with
# GOMAXPROCS=1 (the built-in engine runs inside membraned, whose GOMAXPROCS
# is the daemon's call).
# L7BENCH_DURATION sets each run's length (default 10s).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/go/bin:$PATH
command -v wrk >/dev/null || { echo "proxy.sh: wrk is not installed (hack/deps.sh installs it)" >&2; exit 1; }

DUR=${L7BENCH_DURATION:-10s}
SECS=${DUR%s}
tmp=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

go build -o "$tmp/l7bench" ./proxy/internal/l7bench

addr_of() { # wait for "listening ADDR" in $1
	for _ in $(seq 100); do
		a=$(awk '/^listening/{print $2}' "$1" 2>/dev/null)
		[ -n "$a" ] && { echo "$a"; return; }
		sleep 0.05
	done
	echo "proxy.sh: $1 never listened" >&2; exit 1
}

"$tmp/l7bench" upstream -listen 127.0.0.1:0 >"$tmp/up.out" 2>&1 & UPPID=$!; pids+=($UPPID)
UP=$(addr_of "$tmp/up.out")
"$tmp/l7bench" proxy -listen 127.0.0.1:0 -upstream "$UP" >"$tmp/px.out" 2>&1 & PXPID=$!; pids+=($PXPID)
PX=$(addr_of "$tmp/px.out")
PATHQ=/public/index.html

rps() { wrk -t2 -c50 -d"$DUR" "$@" | awk '/^Requests\/sec/{print $2}'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

echo "== L7 proxy: built-in engine vs direct (upstream $UP, proxy $PX, ${DUR} per run)"
direct=$(rps "http://$UP$PATHQ")
proxied=$(rps "http://$PX$PATHQ")
echo "keep-alive GET req/s: direct $direct, proxy $proxied, ratio $(awk -v a="$proxied" -v b="$direct" 'BEGIN{printf "%.2f", a/b}') (target >= 0.6)"

u0=$(cpu_ticks "$UPPID")
d=$("$tmp/l7bench" rate -url "http://$UP$PATHQ" -rps 1000 -duration "$DUR")
u1=$(cpu_ticks "$UPPID")
t0=$(cpu_ticks "$PXPID")
p=$("$tmp/l7bench" rate -url "http://$PX$PATHQ" -rps 1000 -duration "$DUR")
t1=$(cpu_ticks "$PXPID")
hz=$(getconf CLK_TCK)
echo "at 1000 req/s direct: $d"
echo "at 1000 req/s proxy:  $p"
awk -v d="$d" -v p="$p" -v dt=$((t1 - t0)) -v ut=$((u1 - u0)) -v hz="$hz" -v secs="$SECS" 'BEGIN{
	split(d, D, " "); split(p, P, " ");
	for (i in D) { if (D[i]=="p50_us") dp50=D[i+1]; if (D[i]=="p99_us") dp99=D[i+1] }
	for (i in P) { if (P[i]=="p50_us") pp50=P[i+1]; if (P[i]=="p99_us") pp99=P[i+1]; if (P[i]=="rate") prate=P[i+1] }
	for (i in D) { if (D[i]=="rate") drate=D[i+1] }
	sub("/s","",prate); sub("/s","",drate);
	cores = dt / hz / secs; ucores = ut / hz / secs;
	printf "added latency at 1000 req/s: p50 %+.0f us, p99 %+.0f us (target p99 <= +1000 us)\n", pp50-dp50, pp99-dp99;
	printf "proxy CPU: %.3f cores at %.0f req/s = %.3f cores per 1000 req/s (target <= 0.1)\n", cores, prate, cores / (prate/1000);
	printf "baseline: bare Go net/http server (the upstream, direct load) %.3f cores per 1000 req/s; proxy/bare %.2f\n", ucores / (drate/1000), (cores / (prate/1000)) / (ucores / (drate/1000));
}'

cdirect=$(rps -H "Connection: close" "http://$UP$PATHQ")
cproxied=$(rps -H "Connection: close" "http://$PX$PATHQ")
echo "new connections/s (Connection: close): direct $cdirect, proxy $cproxied, ratio $(awk -v a="$cproxied" -v b="$cdirect" 'BEGIN{printf "%.2f", a/b}')"

# Informational: the same proxy with GOMAXPROCS=1.
GOMAXPROCS=1 "$tmp/l7bench" proxy -listen 127.0.0.1:0 -upstream "$UP" >"$tmp/px1.out" 2>&1 & PX1PID=$!; pids+=($PX1PID)
PX1=$(addr_of "$tmp/px1.out")
proxied1=$(rps "http://$PX1$PATHQ")
t0=$(cpu_ticks "$PX1PID")
p1=$("$tmp/l7bench" rate -url "http://$PX1$PATHQ" -rps 1000 -duration "$DUR")
t1=$(cpu_ticks "$PX1PID")
awk -v p="$p1" -v dt=$((t1 - t0)) -v hz="$hz" -v secs="$SECS" -v ka="$proxied1" -v direct="$direct" 'BEGIN{
	split(p, P, " ");
	for (i in P) { if (P[i]=="p50_us") pp50=P[i+1]; if (P[i]=="p99_us") pp99=P[i+1]; if (P[i]=="rate") prate=P[i+1] }
	sub("/s","",prate);
	cores = dt / hz / secs;
	printf "proxy with GOMAXPROCS=1 (informational): keep-alive %s req/s (ratio %.2f to the direct run above); at 1000 req/s p50 %s us p99 %s us, %.3f cores per 1000 req/s\n", ka, ka/direct, pp50, pp99, cores / (prate/1000);
}'
