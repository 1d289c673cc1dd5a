package proxy

import (
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/membrane-fw/membrane/policies"
)

func TestFromProxyMarkRoundTripsLocalIdentities(t *testing.T) {
	for _, id := range []policies.Identity{
		policies.IdentityHost, policies.IdentityWorld, policies.FirstAllocated, 0xFFFF, 0x10000, 0xABCDEF, policies.FirstCIDR - 1,
		policies.FirstCIDR, policies.FirstCIDR + 5, 2*policies.FirstCIDR - 1,
	} {
		m := FromProxyMark(id)
		magic := MarkMagicFromProxy
		if id >= policies.FirstCIDR {
			magic = MarkMagicFromProxyCIDR
		}
		if m&MarkMagicMask != magic {
			t.Errorf("mark %#x for %d: magic %#x, want %#x", m, id, m&MarkMagicMask, magic)
		}
		got, ok := IdentityFromMark(m)
		if !ok || got != id {
			t.Errorf("IdentityFromMark(%#x) = %d, %v; want %d", m, got, ok, id)
		}
	}
	// Past both forms: the bare magic, judged as the host.
	if m := FromProxyMark(2 * policies.FirstCIDR); m != MarkMagicFromProxy {
		t.Errorf("identity 1<<25: mark %#x, want bare magic %#x", m, MarkMagicFromProxy)
	}
	if _, ok := IdentityFromMark(MarkMagicFromProxy); ok {
		t.Error("a bare from-proxy magic decoded as an identity")
	}
	if _, ok := IdentityFromMark(ToProxyMark(15001)); ok {
		t.Error("a to-proxy mark decoded as from-proxy")
	}
	if ToProxyMark(15001)&MarkMagicMask == MarkMagicFromProxy&MarkMagicMask {
		t.Error("to-proxy and from-proxy magics collide")
	}
	// The refused mark is the proxy's socket magic: the policy-routing
	// rule (to-proxy) and the datapath (from-proxy) leave a refusal's
	// packets alone, and the bridge program still takes its socket for
	// the proxy's.
	if MarkRefused&MarkMagicMask != MarkProxyListener || MarkRefused == MarkProxyListener {
		t.Errorf("refused mark %#x: want the proxy listener's magic %#x and a bit of its own", MarkRefused, MarkProxyListener)
	}
	if _, ok := IdentityFromMark(MarkRefused); ok {
		t.Error("the refused mark decoded as from-proxy")
	}
}

// The datapath's C header is the other half of the contract.
func TestMarkLayoutMatchesDatapath(t *testing.T) {
	h, err := os.ReadFile("../bpf/include/membrane.h")
	if err != nil {
		t.Fatalf("reading the datapath's header: %v", err)
	}
	for name, want := range map[string]uint32{
		"MARK_MAGIC_MASK":            MarkMagicMask,
		"MARK_MAGIC_FROM_PROXY":      MarkMagicFromProxy,
		"MARK_MAGIC_FROM_PROXY_CIDR": MarkMagicFromProxyCIDR,
		"MARK_MAGIC_TO_PROXY":        MarkMagicToProxy,
		"MARK_IDENTITY_MASK":         MarkIdentityMask,
		"FIRST_CIDR_IDENTITY":        uint32(policies.FirstCIDR),
		"MARK_PROXY_LISTENER":        MarkProxyListener,
	} {
		m := regexp.MustCompile(`#define\s+` + name + `\s+(0x[0-9a-fA-F]+)`).FindSubmatch(h)
		if m == nil {
			t.Errorf("%s not defined in bpf/include/membrane.h", name)
			continue
		}
		got, err := strconv.ParseUint(string(m[1]), 0, 32)
		if err != nil || uint32(got) != want {
			t.Errorf("%s = %s in the datapath, %#x in proxy", name, m[1], want)
		}
	}
}
