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
	# A dockerd that was killed (SIGKILL, OOM, a crash) leaves its pid file,
	# and a new one refuses to start while the file names a process that
	# exists: the dead dockerd as a zombie nobody reaped (where PID 1 is no
	# init), or another process that took its PID. Only a live dockerd's
	# pid file is kept.
	pidfile=/var/run/docker.pid
	if [ -f "$pidfile" ]; then
		pid=$(cat "$pidfile" 2>/dev/null || true)
		if [ -z "$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != dockerd ] ||
			[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ]; then
			echo "hack/docker-up.sh: removing $pidfile left by a dockerd that is gone (pid ${pid:-none})"
			rm -f "$pidfile"
		fi
	fi
	echo "hack/docker-up.sh: starting dockerd"
	nohup dockerd --containerd=/run/containerd/containerd.sock >"$logdir/dockerd.log" 2>&1 &
	for _ in $(seq 1 300); do
		docker version >/dev/null 2>&1 && break
		sleep 0.1
	done
fi
docker version --format 'docker server {{.Server.Version}}' 
