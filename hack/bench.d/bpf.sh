#!/usr/bin/env bash
# Datapath throughput: one TCP stream (iperf3, BPF_BENCH_SECONDS, default 10 s)
# between two network namespaces joined by veth pairs and a bridge, the way
# Docker wires containers. Runs: no filter; Membrane with 1,000 policy entries
# per endpoint; iptables with 1,000 rules (br_netfilter); nftables with 1,000
# rules; nftables with one set of 1,000 elements. Prints each as a ratio to the
# no-filter baseline of the same run. Needs root, iperf3, iptables, nft.
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${BPF_BENCH_SECONDS:-10}
sfx=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
H=mbbh-$sfx C0=mbb0-$sfx C1=mbb1-$sfx
PIN=/sys/fs/bpf/membrane-bench-$sfx
LOADER=/tmp/membrane-benchload-$sfx
IP0=10.88.0.2 IP1=10.88.0.3 PORT=5201

cleanup() {
	set +e
	[ -x "$LOADER" ] && ip netns exec "$H" "$LOADER" -pin "$PIN" -cleanup
	for ns in "$C0" "$C1" "$H"; do ip netns del "$ns" 2>/dev/null; done
	rm -f "$LOADER"
}
trap cleanup EXIT

go build -o "$LOADER" ./bpf/internal/benchload

ip netns add "$H"
ip netns add "$C0"
ip netns add "$C1"
ip -n "$H" link set lo up
ip -n "$H" link add br0 type bridge
ip -n "$H" addr add 10.88.0.1/24 dev br0
ip -n "$H" link set br0 up
i=0
for c in "$C0" "$C1"; do
	ip -n "$H" link add "veth$i" type veth peer name eth0 netns "$c"
	ip -n "$H" link set "veth$i" master br0 up
	ip -n "$c" link set lo up
	ip -n "$c" addr add "10.88.0.$((i + 2))/24" dev eth0
	ip -n "$c" link set eth0 up
	i=$((i + 1))
done
nfcall() { ip netns exec "$H" sh -c "echo $1 > /proc/sys/net/bridge/bridge-nf-call-iptables" 2>/dev/null || true; }
nfcall 0

run() {
	ip netns exec "$C1" iperf3 -s -D -p "$PORT" -1 >/dev/null 2>&1
	sleep 0.3
	ip netns exec "$C0" iperf3 -c "$IP1" -p "$PORT" -t "$secs" -f m |
		awk '/receiver/ { for (i = 1; i < NF; i++) if ($(i + 1) == "Mbits/sec") print $i }'
}
declare -A res
res[none]=$(run)

ip netns exec "$H" "$LOADER" -pin "$PIN" -client-if veth0 -server-if veth1 -client-ip "$IP0" -server-ip "$IP1" -port "$PORT" -entries 1000
res[membrane-1000]=$(run)
ip netns exec "$H" "$LOADER" -pin "$PIN" -cleanup

# iptables: 999 rules that do not match, then the one that accepts, both ways.
nfcall 1
rules=$(for i in $(seq 0 998); do echo "-A FORWARD -s 10.250.$((i / 256)).$((i % 256)) -p tcp --dport $((2000 + i / 1000)) -j DROP"; done)
ip netns exec "$H" iptables-restore <<EOR
*filter
:FORWARD ACCEPT [0:0]
$rules
-A FORWARD -s $IP0 -d $IP1 -p tcp --dport $PORT -j ACCEPT
-A FORWARD -s $IP1 -d $IP0 -p tcp --sport $PORT -j ACCEPT
-A FORWARD -j DROP
COMMIT
EOR
res[iptables-1000]=$(run)
ip netns exec "$H" iptables -F FORWARD
nfcall 0

# nftables on the bridge: 1,000 rules, then one set of 1,000 elements.
nftrules=$(for i in $(seq 0 998); do echo "ip saddr 10.250.$((i / 256)).$((i % 256)) tcp dport $((2000 + i / 1000)) drop"; done)
ip netns exec "$H" nft -f - <<EOR
table bridge mbbench {
	chain mbfwd {
		type filter hook forward priority 0; policy accept;
		ether type arp accept
$nftrules
		ip saddr $IP0 ip daddr $IP1 tcp dport $PORT accept
		ip saddr $IP1 ip daddr $IP0 tcp sport $PORT accept
		drop
	}
}
EOR
res[nftables-1000]=$(run)
ip netns exec "$H" nft delete table bridge mbbench

elems=$(for i in $(seq 0 998); do printf '10.250.%d.%d . %d, ' $((i / 256)) $((i % 256)) $((2000 + i / 1000)); done)
ip netns exec "$H" nft -f - <<EOR
table bridge mbbench {
	set allowed {
		type ipv4_addr . inet_service
		elements = { $elems $IP0 . $PORT }
	}
	chain mbfwd {
		type filter hook forward priority 0; policy accept;
		ether type arp accept
		ip saddr . tcp dport @allowed accept
		ip daddr . tcp sport @allowed accept
		drop
	}
}
EOR
res[nftables-set-1000]=$(run)
ip netns exec "$H" nft delete table bridge mbbench

echo "bpf: single TCP stream, ${secs}s, veth + bridge; ratio to no filter (target >= 0.95 for membrane)"
for k in none membrane-1000 iptables-1000 nftables-1000 nftables-set-1000; do
	awk -v k="$k" -v v="${res[$k]:-0}" -v b="${res[none]:-0}" 'BEGIN { printf "  %-18s %10.0f Mbit/s  ratio %.3f\n", k, v, (b > 0 ? v / b : 0) }'
done
