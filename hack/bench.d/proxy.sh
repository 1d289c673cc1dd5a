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
#   Parts 1 and 2 run in interleaved rounds (direct, proxy and relay one
#   after another, the order turning each round) and report the totals over
#   all rounds with the range of the per-round figures: the host's load
#   drifts over a minute, and a round compares targets that ran seconds
#   apart.
#   3. The same load on direct, proxy and relay at once, interleaved (one
#      request to each per tick), for the added p50/p99 latency of the proxy
#      and the relay over direct (target: proxy p99 <= +1 ms). Interleaving
#      makes a moment of noise on the machine hit all three alike.
#   4. New connections/s (wrk with Connection: close): proxy and relay as
#      ratios to direct.
#   5. Part 1 again on the path the proxy runs on when deployed: wrk in one
#      network namespace, the upstream in another, joined by veths and a
#      bridge with the datapath's programs attached; direct is a port the
#      policy admits at L4 only, the proxy a port whose rule has http blocks
#      (the datapath redirects it to the engine). Loopback (parts 1-4) is
#      the engine's cost alone; here the direct path pays for the veths, the
#      bridge and the datapath too, as it does on a Membrane host
#      (bpf.BenchmarkL7Throughput). The relay runs here too, on a third port
#      the datapath redirects to it (a transparent listener that relays each
#      connection to its original destination with the from-proxy mark).
# L7BENCH_DURATION sets the length of parts 3 and 4 (default 10s),
# L7BENCH_ROUNDS and L7BENCH_ROUND the rounds of parts 1 and 2 and the
# length of each target's run in them (default 5 and 4s).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/go/bin:$PATH
command -v wrk >/dev/null || { echo "proxy.sh: wrk is not installed (hack/deps.sh installs it)" >&2; exit 1; }

DUR=${L7BENCH_DURATION:-10s}
ROUNDS=${L7BENCH_ROUNDS:-5}
ROUND=${L7BENCH_ROUND:-4s}
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
rps() { wrk -t2 -c50 -d"$DUR" "$@" | awk '/^Requests\/sec/{print $2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a / b}'; }
field() { # field NAME LINE
	awk -v n="$1" '{for (i = 1; i < NF; i++) if ($i == n) {v = $(i + 1); sub("/s", "", v); print v}}' <<<"$2"
}

echo "== L7 proxy: built-in engine, C relay (the floor) and direct (upstream $UP, proxy $PX, relay $RL, ${DUR} per run)"

# rounds PART: runs PART (keepalive or fixed) on direct (D), proxy (P) and
# relay (R) in ROUNDS interleaved rounds; writes "T requests cpu_s wall_s"
# totals to $tmp/T.tot and each round's requests/s and cores to $tmp/T.rounds.
declare -A PID_OF=([D]=$UPPID [P]=$PXPID [R]=$RLPID) ADDR_OF=([D]=$UP [P]=$PX [R]=$RL)
rounds() {
	local part=$1 r k out t0 t1 s0 s1 rate
	for k in D P R; do : >"$tmp/$k.rounds"; echo "0 0 0" >"$tmp/$k.tot"; done
	for r in $(seq "$ROUNDS"); do
		case $((r % 3)) in 1) order="D P R" ;; 2) order="P R D" ;; 0) order="R D P" ;; esac
		for k in $order; do
			t0=$(cpu_ticks "${PID_OF[$k]}"); s0=$(date +%s.%N)
			if [ "$part" = keepalive ]; then
				rate=$(wrk -t2 -c50 -d"$ROUND" "http://${ADDR_OF[$k]}$PATHQ" | awk '/^Requests\/sec/{print $2}')
			else
				out=$("$tmp/l7bench" rate -url "http://${ADDR_OF[$k]}$PATHQ" -rps 1000 -duration "$ROUND")
				rate=$(field rate "$out")
			fi
			t1=$(cpu_ticks "${PID_OF[$k]}"); s1=$(date +%s.%N)
			awk -v rate="$rate" -v d=$((t1 - t0)) -v hz="$hz" -v a="$s0" -v b="$s1" \
				'{printf "%.0f %.3f %.3f\n", $1 + rate * (b - a), $2 + d / hz, $3 + (b - a)}' "$tmp/$k.tot" >"$tmp/$k.tot.new"
			mv "$tmp/$k.tot.new" "$tmp/$k.tot"
			awk -v rate="$rate" -v d=$((t1 - t0)) -v hz="$hz" -v a="$s0" -v b="$s1" \
				'BEGIN{printf "%s %.4f\n", rate, d / hz / (b - a)}' >>"$tmp/$k.rounds"
		done
	done
}
# mean T: requests/s over all rounds; cpu1000 T: cores per 1,000 req/s.
mean() { awk '{printf "%.0f", $1 / $3}' "$tmp/$1.tot"; }
cpu1000() { awk '{printf "%.3f", $2 / ($1 / 1000)}' "$tmp/$1.tot"; }
# ratio_range T: the lowest and highest per-round ratio of T's req/s to direct's.
ratio_range() {
	paste -d' ' "$tmp/$1.rounds" "$tmp/D.rounds" | awk 'NR == 1 || $1 / $3 < lo {lo = $1 / $3} NR == 1 || $1 / $3 > hi {hi = $1 / $3} END {printf "%.2f-%.2f", lo, hi}'
}
# cpu_range T: the lowest and highest per-round cores per 1,000 req/s.
cpu_range() {
	awk '{c = $2 / ($1 / 1000)} NR == 1 || c < lo {lo = c} NR == 1 || c > hi {hi = c} END {printf "%.3f-%.3f", lo, hi}' "$tmp/$1.rounds"
}

rounds keepalive
echo "keep-alive GET req/s over $ROUNDS interleaved rounds of $ROUND each: direct $(mean D), proxy $(mean P), relay $(mean R)"
echo "keep-alive ratio to direct: proxy $(ratio "$(mean P)" "$(mean D)") (rounds $(ratio_range P); target >= 0.6), relay $(ratio "$(mean R)" "$(mean D)") (rounds $(ratio_range R))"
echo "CPU per 1000 req/s at those rates: proxy $(cpu1000 P) (rounds $(cpu_range P); target <= 0.1), relay $(cpu1000 R) ($(cpu_range R)), bare upstream $(cpu1000 D) cores"

rounds fixed
echo "CPU per 1000 req/s at a fixed 1000 req/s, $ROUNDS interleaved rounds of $ROUND: proxy $(cpu1000 P) (rounds $(cpu_range P); target <= 0.1), relay $(cpu1000 R) ($(cpu_range R)), bare upstream $(cpu1000 D) ($(cpu_range D)) cores"

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

# Part 5: the benchmark holds its own setup (namespaces, datapath, engine),
# with this run's l7bench as the upstream. metric UNIT LINE: a go test
# -bench line's value for UNIT.
metric() { awk -v n="$1" '{for (i = 2; i <= NF; i++) if ($i == n) print $(i - 1)}' <<<"$2"; }
dl=$(MEMBRANE_L7BENCH="$tmp/l7bench" MEMBRANE_L7RELAY="$tmp/relay" L7BENCH_ROUNDS="$ROUNDS" L7BENCH_ROUND="$ROUND" \
	go test -count=1 -run '^$' -bench '^BenchmarkL7Throughput$' -benchtime 1x ./bpf/ | grep '^BenchmarkL7Throughput')
echo "deployed path (veths, bridge, datapath; $ROUNDS interleaved rounds of $ROUND): direct $(metric direct-req/s "$dl" | cut -d. -f1) req/s," \
	"proxy $(metric proxied-req/s "$dl" | cut -d. -f1) req/s, ratio $(printf %.2f "$(metric proxied/direct "$dl")") (rounds $(printf %.2f-%.2f "$(metric min-ratio "$dl")" "$(metric max-ratio "$dl")"); target >= 0.6)," \
	"proxy CPU per 1000 req/s $(printf %.3f "$(metric proxy-cores-per-1k-req/s "$dl")") cores;" \
	"relay ratio $(printf %.2f "$(metric relayed/direct "$dl")") (rounds $(printf %.2f-%.2f "$(metric relay-min-ratio "$dl")" "$(metric relay-max-ratio "$dl")"))," \
	"relay CPU per 1000 req/s $(printf %.3f "$(metric relay-cores-per-1k-req/s "$dl")") cores"
