package proxy

import (
	"testing"

	"github.com/membrane-fw/membrane/policies"
)

func TestFromProxyMarkRoundTripsEveryIdentityClass(t *testing.T) {
	for _, id := range []policies.Identity{
		policies.IdentityHost, policies.IdentityWorld, policies.FirstAllocated,
		0xFFFF, 0x10000, 0xABCDEF, policies.FirstCIDR, policies.FirstCIDR + 77, MaxMarkIdentity,
	} {
		m, err := FromProxyMark(id)
		if err != nil {
			t.Fatalf("FromProxyMark(%d): %v", id, err)
		}
		if m&MarkMagicMask != MarkMagicFromProxy {
			t.Errorf("mark %#x for %d lost the magic", m, id)
		}
		if m&MarkMagicMask == MarkMagicToProxy {
			t.Errorf("mark %#x for %d would be routed back to the proxy", m, id)
		}
		got, ok := IdentityFromMark(m)
		if !ok || got != id {
			t.Errorf("IdentityFromMark(%#x) = %d, %v; want %d", m, got, ok, id)
		}
	}
	if _, err := FromProxyMark(MaxMarkIdentity + 1); err == nil {
		t.Error("identity beyond 25 bits encoded without error")
	}
	if _, ok := IdentityFromMark(ToProxyMark(15001)); ok {
		t.Error("a to-proxy mark decoded as from-proxy")
	}
}
