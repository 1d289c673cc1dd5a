// Package nsinfo reads what Membrane needs from a container's network
// namespace: its inode, its interfaces with their addresses, and the
// host-side peer of each veth.
//
// The host-side veth is found from inside the namespace and never by
// guessing names: the container-side veth's IFLA_LINK is its peer's ifindex,
// and IFLA_LINK_NETNSID says which namespace that index belongs to. When that
// namespace is the daemon's own (its netnsid as seen from the container's
// namespace), the peer is looked up in the daemon's namespace and accepted
// only if its own IFLA_LINK points back at the container-side ifindex.
//
// Which file names the namespace is the caller's choice (see runtime/docker
// and runtime/containerd): Docker's SandboxKey bind mount
// (/run/docker/netns/...) first, because it works whatever PID namespace the
// daemon runs in, then /proc/PID/ns/net.
package nsinfo
