package proxy

import (
	"fmt"

	"github.com/membrane-fw/membrane/policies"
)

// The skb->mark layout shared with the datapath (bpf/). Bits 8-11 hold a
// magic that says what the rest of the mark means; the other bits are free for
// the magic's payload. The layout follows Cilium's, so that marks set by other
// software that uses bit ranges outside 8-11 (Docker sets none) do not collide.
//
//	to proxy   (set by the datapath on packets it sends to the proxy):
//	  bits 8-11  = 0xA
//	  bits 16-31 = the proxy port (informational; the socket was assigned already)
//	from proxy (set by the proxy with SO_MARK on its upstream sockets):
//	  bits 8-11  = 0xB
//	  bits 16-31 = source identity bits 0-15
//	  bits 0-7   = source identity bits 16-23
//	  bit  12    = source identity bit 24 (CIDR identities start at 1<<24)
//	  bits 13-15 = 0
//
// The policy-routing rule that delivers redirected packets locally matches
// MarkMagicToProxy under MarkMagicMask.
const (
	MarkMagicMask      uint32 = 0x0F00
	MarkMagicToProxy   uint32 = 0x0A00
	MarkMagicFromProxy uint32 = 0x0B00

	// MaxMarkIdentity is the largest identity a from-proxy mark can carry.
	MaxMarkIdentity policies.Identity = 1<<25 - 1
)

// ToProxyMark is the mark the datapath sets on a packet it redirects to the
// proxy listening on port.
func ToProxyMark(port uint16) uint32 {
	return MarkMagicToProxy | uint32(port)<<16
}

// FromProxyMark is the SO_MARK of an upstream socket that carries traffic of
// source identity id.
func FromProxyMark(id policies.Identity) (uint32, error) {
	if id > MaxMarkIdentity {
		return 0, fmt.Errorf("identity %d does not fit the from-proxy mark (max %d)", id, MaxMarkIdentity)
	}
	v := uint32(id)
	return MarkMagicFromProxy | (v&0xFFFF)<<16 | (v>>16)&0xFF | (v>>24&1)<<12, nil
}

// IdentityFromMark decodes a from-proxy mark. ok is false when mark does not
// carry the from-proxy magic.
func IdentityFromMark(mark uint32) (id policies.Identity, ok bool) {
	if mark&MarkMagicMask != MarkMagicFromProxy {
		return 0, false
	}
	v := mark>>16 | (mark&0xFF)<<16 | (mark>>12&1)<<24
	return policies.Identity(v), true
}
