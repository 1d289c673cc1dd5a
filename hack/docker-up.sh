#!/usr/bin/env bash
# Starts containerd and dockerd when they are not running, and waits for both.
# Tests and `make run` need a Docker engine; this machine has none running at boot.
set -euo pipefail

logdir=${MEMBRANE_LOGDIR:-/var/log}

if ! ctr --address /run/containerd/containerd.sock version >/dev/null 2>&1; then
	echo "hack/docker-up.sh: starting containerd"
	nohup containerd >"$logdir/containerd.log" 2>&1 &
	for _ in $(seq 1 100); do
		ctr --address /run/containerd/containerd.sock version >/dev/null 2>&1 && break
		sleep 0.1
	done
fi

if ! docker version >/dev/null 2>&1; then
	echo "hack/docker-up.sh: starting dockerd"
	nohup dockerd --containerd=/run/containerd/containerd.sock >"$logdir/dockerd.log" 2>&1 &
	for _ in $(seq 1 300); do
		docker version >/dev/null 2>&1 && break
		sleep 0.1
	done
fi
docker version --format 'docker server {{.Server.Version}}' 
