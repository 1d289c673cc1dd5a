package proxy

import (
	"errors"
	"net/netip"
)

// ErrDockerIsolated is what Resolve returns (wrapped in an *IsolatedError)
// for a connection whose ends Docker keeps apart at L3: the proxy, a host
// process, would otherwise connect them (host-originated traffic never
// meets Docker's DOCKER-ISOLATION rules), giving connectivity the L3 path
// does not have. Engines answer it 403 and record it, without dialling.
var ErrDockerIsolated = errors.New("Docker isolates the client from this destination")

// Reasons an IsolatedError gives (Event.Reason, the flow's reason).
const (
	// ReasonNoSharedNetwork: the destination address is on a Docker
	// network the client is not attached to.
	ReasonNoSharedNetwork = "docker-isolation"
	// ReasonNoICC: they share the destination's network, but it has
	// inter-container communication disabled (enable_icc=false).
	ReasonNoICC = "docker-icc-disabled"
)

// IsolatedError is a connection refused because Docker would not let the
// client reach the destination at L3. Its text goes to the client in the
// 403 body, so it names no container or network: `membrane observe`
// names both ends.
type IsolatedError struct {
	Reason string // ReasonNoSharedNetwork or ReasonNoICC
}

func (e *IsolatedError) Error() string {
	return IsolationText(e.Reason) + "; the proxy does not connect what Docker keeps apart"
}

// IsolationText says for people what a refusal reason (ReasonNoICC,
// ReasonNoSharedNetwork) means, without naming a container or network: the
// start of IsolatedError's text, and what `membrane policy trace --live`
// says of two containers Docker keeps apart.
func IsolationText(reason string) string {
	if reason == ReasonNoICC {
		return "the client and the destination share only a Docker network with inter-container communication disabled (enable_icc=false)"
	}
	return "the destination is on a Docker network the client is not attached to"
}

func (e *IsolatedError) Unwrap() error { return ErrDockerIsolated }

// Attachment is one interface of an endpoint on a Docker network.
type Attachment struct {
	// Network is Docker's network id; "" when unknown (the attachment is
	// then never judged: neither address nor network is known to
	// isolate anything).
	Network string
	// NoICC: the network has inter-container communication disabled.
	NoICC bool
	// Addrs are the endpoint's addresses on this network.
	Addrs []netip.Addr
}

// Networks knows which Docker networks each Docker endpoint is on, to tell
// whether a client could reach a destination at L3 (Reachable). It is
// immutable once built; the daemon builds a new one with every resolver.
type Networks struct {
	// byAddr: endpoint address -> (endpoint, the attachment that holds it).
	byAddr map[netip.Addr]attachRef
	// nets[endpoint]: the network ids the endpoint is attached to, with
	// NoICC.
	nets [][]Attachment
	// ipv4Only: dockerd isolates IPv4 only (it runs without ip6tables,
	// the default before Docker 27): its networks reach each other over
	// IPv6, so no IPv6 destination is judged (WithoutIPv6Isolation).
	ipv4Only bool
}

// WithoutIPv6Isolation tells n that dockerd does not isolate IPv6 traffic
// (no ip6tables rules: neither DOCKER-ISOLATION nor enable_icc=false
// apply to it), so Reachable judges IPv4 destinations only: refusing what
// the L3 path carries would be a false refusal. Returns n.
func (n *Networks) WithoutIPv6Isolation() *Networks {
	if n != nil {
		n.ipv4Only = true
	}
	return n
}

type attachRef struct{ ep, att int }

// NewNetworks indexes endpoints: each element is one Docker endpoint (a
// network namespace) and its attachments. Endpoints of other runtimes are
// left out: their isolation is not Docker's.
func NewNetworks(endpoints [][]Attachment) *Networks {
	n := &Networks{byAddr: map[netip.Addr]attachRef{}, nets: endpoints}
	for i, atts := range endpoints {
		for j, a := range atts {
			for _, ad := range a.Addrs {
				n.byAddr[ad.Unmap()] = attachRef{i, j}
			}
		}
	}
	return n
}

// Reachable reports whether a client at src could open a connection to dst
// through Docker's networks, and when not, why (ReasonNoSharedNetwork,
// ReasonNoICC). Only connections between two Docker endpoints are judged:
// an end that is the host, the world or another runtime's endpoint is
// reachable as far as the proxy is concerned (a published port is the
// host's address; Docker's NAT takes traffic to the world).
//
// The destination address belongs to one network; Docker forwards to it
// from the interfaces on that network only (its bridge switches frames
// between them, while DOCKER-ISOLATION drops what is routed in from
// another bridge), and not even those when the network has
// inter-container communication disabled. An endpoint reaching its own
// address is always reachable.
func (n *Networks) Reachable(src, dst netip.Addr) (ok bool, reason string) {
	if n == nil || (n.ipv4Only && !dst.Unmap().Is4()) {
		return true, ""
	}
	s, sok := n.byAddr[src.Unmap()]
	d, dok := n.byAddr[dst.Unmap()]
	if !sok || !dok || s.ep == d.ep {
		return true, ""
	}
	dn := n.nets[d.ep][d.att]
	if dn.Network == "" {
		return true, ""
	}
	// A known attachment to the destination's network decides, whatever
	// the order of the client's interfaces; only then does an unknown one
	// (it could be the destination's network) keep a refusal off.
	unknown := false
	for _, a := range n.nets[s.ep] {
		switch {
		case a.Network == "":
			unknown = true
		case a.Network == dn.Network && dn.NoICC:
			return false, ReasonNoICC
		case a.Network == dn.Network:
			return true, ""
		}
	}
	if unknown {
		return true, ""
	}
	return false, ReasonNoSharedNetwork
}

// RefusalReason is the Event.Reason of an error from Resolve: the
// IsolatedError's reason, "" for other errors.
func RefusalReason(err error) string {
	var ie *IsolatedError
	if errors.As(err, &ie) {
		return ie.Reason
	}
	return ""
}
