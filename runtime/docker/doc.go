// Package docker discovers Docker containers and reports them as endpoints
// (runtime/endpoint). It implements endpoint.Source.
//
// How it follows dockerd:
//   - Connect with API version negotiation (works with Debian's Docker 20.10,
//     API 1.41, and newer), subscribe to the events stream (container create,
//     start, die, destroy, rename, pause, unpause; network connect,
//     disconnect) with a Since a second in the past, and only then list and
//     inspect every container: nothing that happens during the list is missed,
//     and events seen twice are harmless because every event only triggers a
//     re-inspection whose result is diffed against what was reported. The
//     client's Events call returns before dockerd has registered the
//     subscriber, but that leaves no gap (unlike containerd's, see
//     runtime/containerd): dockerd takes the events since Since from its
//     buffer of the last 256 and registers the subscriber under one lock,
//     so an event logged in between is replayed.
//   - The events reader never does slow work: it appends to an unbounded
//     per-container queue (dockerd drops events for readers that fall behind).
//     Workers (Config.Workers at a time) drain each container's queue in
//     order, so a container's events are processed one after another while
//     different containers proceed concurrently.
//   - When the stream breaks (dockerd stopped, killed, restarted), the source
//     reconnects with exponential backoff (Config.MinBackoff..MaxBackoff) and
//     resyncs in full: endpoints that vanished meanwhile are reported
//     Removed, changed ones Updated, new ones Added, unchanged ones not at
//     all. Synced is closed after the first full resync.
//
// Where the network namespace comes from: the container's
// NetworkSettings.SandboxKey (/run/docker/netns/ID, a bind mount dockerd
// makes) first, because it is valid whatever PID namespace the daemon runs in;
// when that file cannot be opened (the daemon runs in a mount namespace
// without /run/docker, e.g. in a container of its own without that bind
// mount), /proc/PID/ns/net of the container's main process, which needs the
// host PID namespace. A daemon in a container therefore needs
// /run/docker/netns bind-mounted (rslave) or --pid=host; under systemd, keep
// /run visible (no PrivateMounts hiding /run/docker) and CAP_SYS_ADMIN for
// setns.
//
// Network modes:
//   - bridge, user-defined bridges (Compose networks), several networks on
//     one container: ModeBridge, one Interface per network with the host-side
//     veth (found through IFLA_LINK, see runtime/nsinfo) and Network set from
//     the matching MAC in the inspect output. Its Addrs are those of the
//     interface that Docker gave it on that network (IPAddress,
//     GlobalIPv6Address): a container with NET_ADMIN can add any address,
//     another container's or the host's, and would otherwise take that
//     address's identity in the ipcache;
//   - container:<id|name>: the container joins that endpoint. The endpoint's
//     Containers list it after the owner and its labels merge as
//     endpoint.MergeLabels says (Nomad's pause-container pattern). When the
//     container it names joined another itself, Docker puts it in that
//     other's namespace, and so does the source (following the chain to the
//     owner, up to 8 hops);
//   - host: ModeHost, no interfaces, Netns is the host's;
//   - none: ModeNone, no interfaces (loopback is not reported), until
//     someone else puts one there (a CNI plugin: Nomad's bridge networking
//     does so in its pause container). Those interfaces are reported with
//     the addresses the namespace holds on them, since Docker gave none
//     (policy decision 70). No Docker event announces them: Recheck, called
//     when the link watcher sees such a veth, reads the container again, and
//     again 1 and 5 seconds later for the address that comes after the veth.
//
// Only running (or paused) containers have endpoints; a container that is
// created but not started has no network namespace yet, and one that Docker
// is restarting (restart policy) has none until the restart's start event.
//
// A network namespace that exists but cannot be read (nsinfo.Inspect fails
// other than with nsinfo.ErrGone: setns, netlink, too many open files)
// does not remove the endpoint: it keeps the network state last read, with
// Endpoint.Stale saying why, and the container is read again after a
// backoff (endpoint.ErrRetry, 1 s doubling to 30 s) until it can be. A
// namespace that is gone means the container stopped: its endpoint goes.
//
// Safety net: every Config.RecheckInterval (default 5 minutes) every known
// and listed container is pushed through the same ordered per-container
// queue, so a state no event announced is corrected without racing the
// container's own events.
package docker
