#!/usr/bin/env bash
# L7 proxy benchmark (`make bench`): the built-in engine against direct
# requests and against the floor, a relay in C that only copies bytes (one
# thread, epoll, no parsing, no runtime: hack/bench.d/relay.c), all in the
# same run on loopback with the same upstream (a bare Go net/http server
# returning 24 bytes). What the relay costs, any userspace proxy on this
# machine costs; what the engine costs beyond it is its own.
#
#   1. wrk keep-alive GETs (-t2 -c50): requests/s through the proxy and the
#      relay as ratios to direct (target: proxy >= 0.6), and each server
#      process's CPU per 1,000 requests/s at that saturated rate.
#   2. A fixed 1,000 requests/s load (l7bench rate, open loop, 8 keep-alive
#      connections) on one target at a time: CPU per 1,000 requests/s of the
#      proxy (target <= 0.1 core), the relay and the bare upstream, from
#      /proc/PID/stat.
#   3. The same load on direct, proxy and relay at once, interleaved (one
#      request to each per tick), for the added p50/p99 latency of the proxy
#      and the relay over direct (target: proxy p99 <= +1 ms). Interleaving
#      makes a moment of noise on the machine hit all three alike.
#   4. New connections/s (wrk with Connection: close): proxy and relay as
#      ratios to direct.
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
clang -O2 -Wall -Werror -o "$tmp/relay" hack/bench.d/relay.c

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
"$tmp/relay" 0 "${UP##*:}" >"$tmp/rl.out" 2>&1 & RLPID=$!; pids+=($RLPID)
RL=$(addr_of "$tmp/rl.out")
PATHQ=/public/index.html
hz=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# measure PID CMD...: runs CMD and prints its output; cores then prints the
# CPU PID used meanwhile, in cores.
measure() {
	local pid=$1 t0 t1 s0 s1 out
	shift
	t0=$(cpu_ticks "$pid"); s0=$(date +%s.%N)
	out=$("$@")
	t1=$(cpu_ticks "$pid"); s1=$(date +%s.%N)
	awk -v d=$((t1 - t0)) -v hz="$hz" -v a="$s0" -v b="$s1" 'BEGIN{printf "%.3f", d / hz / (b - a)}' >"$tmp/cores"
	echo "$out"
}
cores() { cat "$tmp/cores"; }
rps() { wrk -t2 -c50 -d"$DUR" "$@" | awk '/^Requests\/sec/{print $2}'; }
per1000() { awk -v c="$1" -v r="$2" 'BEGIN{printf "%.3f", c / (r / 1000)}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a / b}'; }
field() { # field NAME LINE
	awk -v n="$1" '{for (i = 1; i < NF; i++) if ($i == n) {v = $(i + 1); sub("/s", "", v); print v}}' <<<"$2"
}

echo "== L7 proxy: built-in engine, C relay (the floor) and direct (upstream $UP, proxy $PX, relay $RL, ${DUR} per run)"

kd=$(measure "$UPPID" rps "http://$UP$PATHQ"); kdc=$(cores)
kp=$(measure "$PXPID" rps "http://$PX$PATHQ"); kpc=$(cores)
kr=$(measure "$RLPID" rps "http://$RL$PATHQ"); krc=$(cores)
echo "keep-alive GET req/s: direct $kd, proxy $kp, relay $kr"
echo "keep-alive ratio to direct: proxy $(ratio "$kp" "$kd") (target >= 0.6), relay $(ratio "$kr" "$kd")"
echo "CPU per 1000 req/s at those rates: proxy $(per1000 "$kpc" "$kp") (target <= 0.1), relay $(per1000 "$krc" "$kr"), bare upstream $(per1000 "$kdc" "$kd") cores"

fd=$(measure "$UPPID" "$tmp/l7bench" rate -url "http://$UP$PATHQ" -rps 1000 -duration "$DUR"); fdc=$(cores)
fp=$(measure "$PXPID" "$tmp/l7bench" rate -url "http://$PX$PATHQ" -rps 1000 -duration "$DUR"); fpc=$(cores)
fr=$(measure "$RLPID" "$tmp/l7bench" rate -url "http://$RL$PATHQ" -rps 1000 -duration "$DUR"); frc=$(cores)
echo "CPU per 1000 req/s at a fixed 1000 req/s: proxy $(per1000 "$fpc" "$(field rate "$fp")") (target <= 0.1), relay $(per1000 "$frc" "$(field rate "$fr")"), bare upstream $(per1000 "$fdc" "$(field rate "$fd")") cores"

il=$("$tmp/l7bench" rate -url "http://$UP$PATHQ,http://$PX$PATHQ,http://$RL$PATHQ" -rps 1000 -duration "$DUR")
ld=$(grep -F "url http://$UP" <<<"$il"); lp=$(grep -F "url http://$PX" <<<"$il"); lr=$(grep -F "url http://$RL" <<<"$il")
echo "at 1000 req/s each, interleaved (p50/p99 us): direct $(field p50_us "$ld")/$(field p99_us "$ld"), proxy $(field p50_us "$lp")/$(field p99_us "$lp"), relay $(field p50_us "$lr")/$(field p99_us "$lr")"
awk -v dp50="$(field p50_us "$ld")" -v dp99="$(field p99_us "$ld")" -v pp50="$(field p50_us "$lp")" -v pp99="$(field p99_us "$lp")" \
	-v rp50="$(field p50_us "$lr")" -v rp99="$(field p99_us "$lr")" 'BEGIN{
	printf "added latency: proxy p50 %+.0f us, p99 %+.0f us (target p99 <= +1000 us); relay p50 %+.0f us, p99 %+.0f us\n", pp50-dp50, pp99-dp99, rp50-dp50, rp99-dp99 }'

cd_=$(rps -H "Connection: close" "http://$UP$PATHQ")
cp_=$(rps -H "Connection: close" "http://$PX$PATHQ")
cr_=$(rps -H "Connection: close" "http://$RL$PATHQ")
echo "new connections/s (Connection: close): direct $cd_, proxy $cp_ (ratio $(ratio "$cp_" "$cd_")), relay $cr_ (ratio $(ratio "$cr_" "$cd_"))"
