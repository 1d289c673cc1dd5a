// Package linkwatch reports veths on managed bridges the moment the kernel
// announces them, before the container's process runs, so the daemon can
// attach its programs fail-closed (traffic judged as identity init) and
// never let a packet pass unjudged.
//
// A Watcher subscribes to rtnetlink link notifications (RTNLGRP_LINK) in the
// daemon's network namespace, then lists the existing links so nothing that
// appeared before the subscription is missed (the list after the subscribe
// closes the gap; a link seen twice is reported once). It reports:
//   - Added: a veth became the port of a managed bridge (its master's name
//     matches one of Config.Bridges, shell patterns; default docker0, br-*,
//     cni0, cni-*, cbr0, nerdctl*). Docker enslaves the host-side veth
//     before it moves the other end into the container's namespace and long
//     before the container's process starts;
//   - Updated: the veth's peer moved into another namespace (or the resolved
//     container changed); PeerNetnsID/PeerNetnsInode now name it;
//   - Removed: the veth was deleted or left the managed bridge.
//
// Each Event carries the host-side ifindex and name, the master, the peer's
// ifindex (IFLA_LINK) and netnsid (IFLA_LINK_NETNSID), the peer namespace's
// inode when the watcher can find its file (Config.NetnsDirs: Docker's
// /run/docker/netns and iproute2's /run/netns by default), and the container
// when a Resolver (runtime/docker.Source, runtime/containerd.Source) already
// knows the endpoint that owns that namespace: a containerd container is
// known from its create event (its OCI spec names the netns before any veth
// exists, as CNI plugins create the veth inside it), a running Docker
// container that gets `docker network connect`ed is known by its netns.
// A brand-new Docker container is not: dockerd names its sandbox namespace
// with a random id and publishes the container's SandboxKey only after the
// start completes; the daemon then matches the runtime's endpoint event to
// the watcher's report by host ifindex.
//
// If the netlink socket overruns (ENOBUFS), the watcher resubscribes and
// relists, reporting Removed for veths that vanished meanwhile.
package linkwatch
