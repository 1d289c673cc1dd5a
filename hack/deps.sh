#!/usr/bin/env bash
# Installs the Debian packages that building, running and testing Membrane need.
# Safe to run again: it does nothing when everything is already there.
set -euo pipefail

pkgs=(
	docker.io containerd docker-compose
	clang llvm libbpf-dev bpftool iproute2 busybox-static
	iptables nftables iperf3 wrk nodejs
	debootstrap lintian rpm systemd-container
	ca-certificates make git
)

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
	echo "hack/deps.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1; then
	if [ -x /usr/local/go/bin/go ]; then
		echo "hack/deps.sh: Go is at /usr/local/go/bin; add it to PATH" >&2
	else
		echo "hack/deps.sh: Go 1.26 is required (https://go.dev/dl)" >&2
	fi
	exit 1
fi
go mod download
