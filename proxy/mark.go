package proxy

import (
	"github.com/membrane-fw/membrane/policies"
)

// The skb->mark layout shared with the datapath; it mirrors
// bpf/include/membrane.h (TestMarkLayoutMatchesDatapath keeps them equal).
// The top byte is a magic that says what the low bits mean:
//
//	to proxy   0xb6000000 | egress flag       set by the datapath on packets it
//	           (1<<16) | proxy port (low 16)  redirects to the proxy; the
//	                                          policy-routing rule matches it
//	                                          (on the magic only). The egress
//	                                          flag (MARK_TO_PROXY_EGRESS) is
//	                                          set when the redirect was for the
//	                                          container's egress, clear for its
//	                                          ingress
//	from proxy 0xb7000000 | source identity   set by the proxy with SO_MARK on
//	                       (low 24 bits)      its upstream sockets; the
//	                                          destination's program takes the
//	                                          remote identity from it and never
//	                                          redirects the flow again
//	from proxy 0xb8000000 | source identity   the same for a CIDR identity
//	(CIDR)     less FirstCIDR (low 24 bits)   (FirstCIDR and up), which the
//	                                          first form cannot hold
//	refused    0xb9000001                     set by the proxy with SO_MARK on a
//	                                          client connection it refuses because
//	                                          Docker isolates its ends
//	                                          (IsolatedError); the host's nftables
//	                                          table membrane_l7 leaves its packets
//	                                          untracked (bpf.PrepareProxyPath), so
//	                                          Docker's MASQUERADE does not rewrite
//	                                          the destination's address in the
//	                                          refusal, when they come from the
//	                                          daemon's cgroup (bpf.SelfCgroup): the
//	                                          mark takes only CAP_NET_RAW. The
//	                                          datapath ignores it
//
// No identity fits in neither: the compiler gives CIDR identities one per
// prefix that policies name, far fewer than 1<<24.
const (
	MarkMagicMask          uint32 = 0xff000000
	MarkMagicToProxy       uint32 = 0xb6000000
	MarkMagicFromProxy     uint32 = 0xb7000000
	MarkMagicFromProxyCIDR uint32 = 0xb8000000
	MarkIdentityMask       uint32 = 0x00ffffff
)

// MarkProxyListener is the SO_MARK of the proxy's listening sockets. The
// datapath hands redirected connections, and their later packets, only to
// sockets with this magic in the top byte (accepted sockets inherit it),
// and, when bpf.Config.ProxyCgroup is set, only in the proxy's cgroup: the
// mark takes CAP_NET_RAW (Linux 5.17 and later), which Docker gives every
// container. So a process that binds the port while membraned is down gets
// no connection. No routing rule looks at it.
//
// MarkRefused is the same magic with bit 0: an accepted connection the
// proxy refuses because Docker isolates its ends (see above).
const (
	MarkProxyListener uint32 = 0xb9000000
	MarkRefused       uint32 = MarkProxyListener | 1
)

// ToProxyMark is the mark the datapath sets on a packet it redirects to the
// proxy listening on port, for a container's ingress; an egress redirect
// also carries bit 16 (ToProxyMark(port) | 1<<16). Match the magic
// (MarkMagicMask), not the whole mark.
func ToProxyMark(port uint16) uint32 {
	return MarkMagicToProxy | uint32(port)
}

// FromProxyMark is the SO_MARK of an upstream socket that carries traffic of
// source identity id. An identity that fits in neither form (none does: see
// above) gets the bare magic, which the datapath judges as the proxy's own
// address, the host.
func FromProxyMark(id policies.Identity) uint32 {
	switch {
	case id < policies.FirstCIDR:
		return MarkMagicFromProxy | uint32(id)
	case id-policies.FirstCIDR <= policies.Identity(MarkIdentityMask):
		return MarkMagicFromProxyCIDR | uint32(id-policies.FirstCIDR)
	}
	return MarkMagicFromProxy
}

// IdentityFromMark decodes a from-proxy mark. ok is false when mark does not
// carry a from-proxy magic or carries no identity.
func IdentityFromMark(mark uint32) (id policies.Identity, ok bool) {
	switch mark & MarkMagicMask {
	case MarkMagicFromProxy:
		if mark&MarkIdentityMask == 0 {
			return 0, false
		}
		return policies.Identity(mark & MarkIdentityMask), true
	case MarkMagicFromProxyCIDR:
		return policies.FirstCIDR + policies.Identity(mark&MarkIdentityMask), true
	}
	return 0, false
}
