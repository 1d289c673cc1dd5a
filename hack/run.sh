#!/usr/bin/env bash
# `make run`: runs membraned in the foreground with the example policies.
# The Makefile has already run hack/deps.sh, hack/docker-up.sh and built
# bin/. Stop it with Ctrl-C: the datapath stays in place (as with SIGTERM
# under systemd); `bin/membraned --config "$cfg" --cleanup` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ "$(id -u)" != 0 ]; then
	echo "hack/run.sh: membraned needs root (BPF, network namespaces); run 'sudo make run'" >&2
	exit 1
fi

# bpffs holds the pinned maps and links.
if ! mountpoint -q /sys/fs/bpf; then
	mount -t bpf bpf /sys/fs/bpf
fi

# A tiny image for the try-out in the README (no registry needed).
if ! docker image inspect membrane/busybox:try >/dev/null 2>&1 && command -v busybox >/dev/null; then
	tmp=$(mktemp -d)
	mkdir -p "$tmp/bin" "$tmp/tmp" "$tmp/etc" "$tmp/proc" "$tmp/sys" "$tmp/dev"
	cp "$(command -v busybox)" "$tmp/bin/busybox"
	for c in $("$tmp/bin/busybox" --list); do [ "$c" = busybox ] || ln -sf busybox "$tmp/bin/$c"; done
	echo "root:x:0:0:root:/:/bin/sh" >"$tmp/etc/passwd"
	tar -C "$tmp" -c . | docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - membrane/busybox:try >/dev/null
	rm -rf "$tmp"
	echo "hack/run.sh: built image membrane/busybox:try for the try-out"
fi

rundir=${MEMBRANE_RUN_DIR:-/run/membrane-dev}
mkdir -p "$rundir"
cfg="$rundir/membrane.hcl"
cat >"$cfg" <<HCL
# Written by hack/run.sh: the example policies, the standard socket (so
# 'bin/membrane status' works without --socket), a state directory of its own.
policy_dir = "$root/examples/policies"
state_dir  = "/var/lib/membrane-dev"
api_socket = "/run/membrane/membrane.sock"
log_level  = "${MEMBRANE_LOG_LEVEL:-info}"
# The L7 proxy for the policies' http rules: auto = Envoy when on PATH,
# else the built-in Go proxy (MEMBRANE_L7_ENGINE=builtin|envoy forces one).
l7 {
  engine = "${MEMBRANE_L7_ENGINE:-auto}"
  port   = ${MEMBRANE_L7_PORT:-15001}
}
HCL
# MEMBRANE_BRIDGES="br-x docker0" limits enforcement to those bridges.
if [ -n "${MEMBRANE_BRIDGES:-}" ]; then
	printf 'bridges = [%s]\n' "$(printf '"%s",' $MEMBRANE_BRIDGES | sed 's/,$//')" >>"$cfg"
fi

cat <<MSG
membraned: config $cfg, policies $root/examples/policies
In another terminal:
  bin/membrane status
  bin/membrane endpoint list
  bin/membrane observe --follow --verdict dropped
  bin/membrane observe --follow --type l7      (every HTTP request the L7 proxy judged)
Ctrl-C stops membraned; enforcement stays until 'bin/membraned --config $cfg --cleanup'.
MSG
exec bin/membraned --config "$cfg"
