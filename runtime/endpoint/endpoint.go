package endpoint

import (
	"maps"
	"net"
	"net/netip"
	"slices"
	"time"
)

// Runtime names the runtime an endpoint was found through.
type Runtime string

const (
	RuntimeDocker     Runtime = "docker"
	RuntimeContainerd Runtime = "containerd"
)

// NetworkMode says how the endpoint is networked.
type NetworkMode string

const (
	// ModeBridge: the endpoint has its own netns with veths on one or more
	// bridges (Docker's default bridge, user-defined/Compose networks, CNI
	// bridges). Its traffic is enforced on the host-side veths.
	ModeBridge NetworkMode = "bridge"
	// ModeHost: the containers share the host's network namespace. There is
	// no veth; policy treats them as the entity host.
	ModeHost NetworkMode = "host"
	// ModeNone: an own netns with only loopback (Docker --network none, or a
	// containerd netns nobody wired up yet). Nothing to attach to until an
	// interface appears.
	ModeNone NetworkMode = "none"
)

// State is the lifecycle state of the endpoint's netns owner.
type State string

const (
	StateRunning State = "running"
	StatePaused  State = "paused"
)

// Container is one container in an endpoint. The first container of
// Endpoint.Containers is the netns owner.
type Container struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`             // without a leading "/"
	Labels map[string]string `json:"labels,omitempty"` // raw, as the runtime reports them
	Image  string            `json:"image,omitempty"`
	Pid    int               `json:"pid,omitempty"` // host PID of the main process, 0 when unknown
	// Namespace is the containerd namespace ("" for Docker).
	Namespace string `json:"namespace,omitempty"`
}

// Netns identifies the endpoint's network namespace.
type Netns struct {
	// Path is the file the namespace was opened through: Docker's SandboxKey
	// (/run/docker/netns/...), the OCI spec's netns path, or /proc/PID/ns/net.
	Path string `json:"path,omitempty"`
	// Inode is the namespace's inode number (stable while it lives; the same
	// for every path to it).
	Inode uint64 `json:"inode,omitempty"`
}

// Interface is one network interface inside the endpoint's netns.
type Interface struct {
	// Name is the container-side name (eth0, eth1, ...).
	Name string `json:"name"`
	// Ifindex is the container-side ifindex (inside the netns).
	Ifindex int              `json:"ifindex"`
	MAC     net.HardwareAddr `json:"mac,omitempty"`
	// Addrs are the interface's addresses, IPv4 and IPv6, without the
	// IPv6 link-local ones (fe80::/10 are the same on every link and never
	// name an endpoint in the ipcache). A runtime that assigns addresses
	// reports only those it assigned (Docker): one that a container with
	// NET_ADMIN put there itself is not its own.
	Addrs []netip.Prefix `json:"addrs,omitempty"`
	// HostIfindex and HostName are the host-side peer of the veth, found
	// through IFLA_LINK and checked against the peer's own IFLA_LINK. Zero /
	// "" when the peer is not in the daemon's netns (not a veth, or a veth
	// to some other namespace).
	HostIfindex int    `json:"host_ifindex,omitempty"`
	HostName    string `json:"host_name,omitempty"`
	// Bridge is the host-side peer's master device (docker0, br-..., cni0).
	Bridge string `json:"bridge,omitempty"`
	// Network is the runtime's network name (Docker: "bridge", a user or
	// Compose network), "" when the runtime does not say.
	Network string `json:"network,omitempty"`
	// NetworkID is Docker's network id ("" for other runtimes, or when
	// dockerd did not say). Two Docker endpoints reach each other at L3
	// only through a network they share: Docker drops traffic between
	// its networks (DOCKER-ISOLATION), which the L7 proxy must respect.
	NetworkID string `json:"network_id,omitempty"`
	// NoICC: the Docker network has inter-container communication
	// disabled (com.docker.network.bridge.enable_icc=false, or dockerd's
	// --icc=false for the default bridge): its containers do not reach
	// each other through it.
	NoICC bool `json:"no_icc,omitempty"`
}

// Endpoint is one network namespace and what lives in it.
type Endpoint struct {
	// ID is unique within the runtime: the Docker container id of the netns
	// owner, or "NAMESPACE/ID" for containerd.
	ID      string  `json:"id"`
	Runtime Runtime `json:"runtime"`
	// Containers are the containers sharing the netns, the owner first, the
	// joined ones sorted by id.
	Containers  []Container       `json:"containers"`
	Netns       Netns             `json:"netns"`
	Interfaces  []Interface       `json:"interfaces,omitempty"` // sorted by Name
	Labels      map[string]string `json:"labels"`               // raw merged labels plus derived ones
	NetworkMode NetworkMode       `json:"network_mode"`
	State       State             `json:"state"`
	// Unenforced describes the interfaces whose traffic no program sees,
	// because it leaves the namespace other than through a veth to the host
	// (a macvlan or ipvlan on a host device, a veth into another
	// namespace), and why (nsinfo.Info.Unpaired).
	Unenforced []string `json:"unenforced,omitempty"`
	// Stale says why Netns, Interfaces and NetworkMode are not current:
	// the source could not read the network namespace (for a reason other
	// than its being gone). They are the last state read (none for a
	// container never read whole), and the source reads it again until it
	// can. "" when current.
	Stale string `json:"stale,omitempty"`
}

// HostIfindexes returns the host-side ifindex of every interface that has one.
func (e *Endpoint) HostIfindexes() []int {
	var out []int
	for _, i := range e.Interfaces {
		if i.HostIfindex != 0 {
			out = append(out, i.HostIfindex)
		}
	}
	return out
}

// Addrs returns every address of every interface.
func (e *Endpoint) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, i := range e.Interfaces {
		for _, p := range i.Addrs {
			out = append(out, p.Addr())
		}
	}
	return out
}

// Clone returns a deep copy.
func (e Endpoint) Clone() Endpoint {
	c := e
	c.Containers = make([]Container, len(e.Containers))
	for i, ct := range e.Containers {
		ct.Labels = maps.Clone(ct.Labels)
		c.Containers[i] = ct
	}
	c.Interfaces = make([]Interface, len(e.Interfaces))
	for i, itf := range e.Interfaces {
		itf.MAC = slices.Clone(itf.MAC)
		itf.Addrs = slices.Clone(itf.Addrs)
		c.Interfaces[i] = itf
	}
	c.Labels = maps.Clone(e.Labels)
	c.Unenforced = slices.Clone(e.Unenforced)
	return c
}

// Equal reports whether two endpoints are the same in every field.
func (e *Endpoint) Equal(o *Endpoint) bool {
	if e.ID != o.ID || e.Runtime != o.Runtime || e.Netns != o.Netns || e.NetworkMode != o.NetworkMode || e.State != o.State || e.Stale != o.Stale {
		return false
	}
	if !maps.Equal(e.Labels, o.Labels) || len(e.Containers) != len(o.Containers) || len(e.Interfaces) != len(o.Interfaces) ||
		!slices.Equal(e.Unenforced, o.Unenforced) {
		return false
	}
	for i := range e.Containers {
		a, b := e.Containers[i], o.Containers[i]
		if a.ID != b.ID || a.Name != b.Name || a.Image != b.Image || a.Pid != b.Pid || a.Namespace != b.Namespace || !maps.Equal(a.Labels, b.Labels) {
			return false
		}
	}
	for i := range e.Interfaces {
		a, b := e.Interfaces[i], o.Interfaces[i]
		if a.Name != b.Name || a.Ifindex != b.Ifindex || a.HostIfindex != b.HostIfindex || a.HostName != b.HostName ||
			a.Bridge != b.Bridge || a.Network != b.Network || a.NetworkID != b.NetworkID || a.NoICC != b.NoICC || a.MAC.String() != b.MAC.String() || !slices.Equal(a.Addrs, b.Addrs) {
			return false
		}
	}
	return true
}

// EventType is what happened to an endpoint.
type EventType string

const (
	Added   EventType = "added"
	Updated EventType = "updated"
	Removed EventType = "removed"
)

// Event reports one change. Endpoint is the whole endpoint after the change
// (for Removed: as it was last reported), so consumers never merge deltas.
type Event struct {
	Type     EventType
	Endpoint Endpoint
	// Time is when the source noticed the change.
	Time time.Time
	// Resync is true for events produced by a full resync (the first list,
	// or the one after a reconnect) rather than by a runtime event.
	Resync bool
}
