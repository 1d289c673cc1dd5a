package bpf

import "fmt"

// Reason is why the datapath passed or dropped a packet (enum reason in
// include/membrane.h).
type Reason uint8

const (
	ReasonAllowPolicy      Reason = 0
	ReasonAllowDefault     Reason = 1
	ReasonAllowEstablished Reason = 2
	ReasonAllowReply       Reason = 3
	ReasonAllowRelated     Reason = 4
	ReasonAllowNeighbor    Reason = 5
	ReasonAllowNotEnforced Reason = 6
	ReasonRedirect         Reason = 7
	ReasonAudit            Reason = 8

	// ReasonProxyTimeWait: an L7-redirected packet went to the proxy's
	// socket of its tuple in TIME_WAIT (the proxy closed that connection
	// first), not to a listener; a SYN among them is a client reusing the
	// source port, and reached that socket with its SYN flag cleared
	// (bridge.c). Not a drop: the connection gets through.
	ReasonProxyTimeWait Reason = 9

	ReasonDropPolicy      Reason = 16
	ReasonDropDefaultDeny Reason = 17
	ReasonDropUnknown     Reason = 18
	ReasonDropMalformedL3 Reason = 19
	ReasonDropMalformedL4 Reason = 20
	ReasonDropExtHeaders  Reason = 21
	ReasonDropFragNoFlow  Reason = 22
	ReasonDropUnsupported Reason = 23
	// L7 redirect failures. The bridge program drops a redirected packet
	// when no proxy socket listens on its port (proxy down, wrong port) or
	// bpf_sk_assign refuses it (or it is not TCP, or it is a SYN for a
	// TIME_WAIT socket whose SYN flag could not be cleared); the container program
	// drops it when the endpoint has no bridge to send it through.
	ReasonDropProxyNoListener Reason = 24
	ReasonDropProxyAssign     Reason = 25
	ReasonDropProxyNoBridge   Reason = 26
	// ReasonDropSpoofedSource: an endpoint sent from an address of another
	// identity (or claimed one in ARP).
	ReasonDropSpoofedSource Reason = 27
	// ReasonDropProxyForeign: the socket listening on the proxy port is not
	// the proxy's (it lacks proxy.MarkProxyListener): a process took the
	// port while membraned was down.
	ReasonDropProxyForeign Reason = 28
	// ReasonDropNotAddressed: a packet reached an endpoint's veth that is
	// addressed to another endpoint or the host (a container that took
	// another's MAC address in the bridge's forwarding table draws its
	// traffic).
	ReasonDropNotAddressed Reason = 29

	reasonMax       = 30
	reasonFirstDrop = 16
)

var reasonNames = map[Reason]string{
	ReasonAllowPolicy:      "allow-policy",
	ReasonAllowDefault:     "allow-default",
	ReasonAllowEstablished: "established",
	ReasonAllowReply:       "reply",
	ReasonAllowRelated:     "related",
	ReasonAllowNeighbor:    "neighbor",
	ReasonAllowNotEnforced: "not-enforced",
	ReasonRedirect:         "redirect",
	ReasonAudit:            "audit",

	ReasonProxyTimeWait: "proxy-timewait",

	ReasonDropPolicy:      "policy-deny",
	ReasonDropDefaultDeny: "default-deny",
	ReasonDropUnknown:     "unknown-endpoint",
	ReasonDropMalformedL3: "malformed-l3",
	ReasonDropMalformedL4: "malformed-l4",
	ReasonDropExtHeaders:  "ipv6-ext-headers",
	ReasonDropFragNoFlow:  "frag-no-flow",
	ReasonDropUnsupported: "unsupported-l3",

	ReasonDropProxyNoListener: "proxy-no-listener",
	ReasonDropProxyAssign:     "proxy-assign-failed",
	ReasonDropProxyNoBridge:   "proxy-no-bridge",
	ReasonDropSpoofedSource:   "spoofed-source",
	ReasonDropProxyForeign:    "proxy-foreign-listener",
	ReasonDropNotAddressed:    "not-addressed",
}

func (r Reason) String() string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// Drop reports whether the reason drops the packet.
func (r Reason) Drop() bool { return r >= reasonFirstDrop }

// Reasons lists every reason, for metrics.
func Reasons() []Reason {
	var out []Reason
	for r := Reason(0); r < reasonMax; r++ {
		if _, ok := reasonNames[r]; ok {
			out = append(out, r)
		}
	}
	return out
}
