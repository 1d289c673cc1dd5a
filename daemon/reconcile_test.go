package daemon

import (
	"testing"

	"github.com/membrane-fw/membrane/bpf"
	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/policies"
)

func allow(remote policies.Identity, port uint16) policies.Entry {
	return policies.Entry{Direction: policies.Ingress, Remote: remote, Proto: policies.ProtoTCP, Port: port, PortPrefix: 16, Action: policies.Allow, RuleID: 1}
}

// A new identity's peers may wait for their maps only when all they miss
// is plain allow entries for the new identity: meanwhile they are stricter
// than the target policy, never looser.
func TestDeferPeersOnlyDefersMissingAllows(t *testing.T) {
	const a, b, newID policies.Identity = 256, 257, 300
	cur := &policies.Model{Identities: []policies.IdentityPolicy{
		{Identity: a, IngressDefaultDeny: true, Entries: []policies.Entry{allow(b, 80)}},
		{Identity: b, IngressDefaultDeny: true, Entries: []policies.Entry{allow(a, 80)}},
	}}
	denyNew := allow(newID, 22)
	denyNew.Action = policies.Deny
	next := &policies.Model{Identities: []policies.IdentityPolicy{
		// a gains an allow for the new identity: deferrable.
		{Identity: a, IngressDefaultDeny: true, Entries: []policies.Entry{allow(b, 80), allow(newID, 80)}},
		// b gains a deny for the new identity: must be written now.
		{Identity: b, IngressDefaultDeny: true, Entries: []policies.Entry{allow(a, 80), denyNew}},
		{Identity: newID, IngressDefaultDeny: true, Entries: []policies.Entry{allow(a, 80)}},
	}}
	out, n := deferPeers(cur, next)
	if n != 1 {
		t.Fatalf("deferred %d identities, want 1", n)
	}
	if len(out.Identities[0].Entries) != 1 {
		t.Errorf("a should keep its current policy for now: %+v", out.Identities[0])
	}
	if len(out.Identities[1].Entries) != 2 || len(out.Identities[2].Entries) != 1 {
		t.Errorf("b and the new identity must be written at once: %+v", out.Identities)
	}

	// Flags changing, an entry removed, or no new identity: nothing deferred.
	flag := *next
	flag.Identities = append([]policies.IdentityPolicy(nil), next.Identities...)
	flag.Identities[0].IngressDefaultDeny = false
	if _, n := deferPeers(cur, &flag); n != 0 {
		t.Errorf("default-deny change deferred")
	}
	removed := &policies.Model{Identities: []policies.IdentityPolicy{
		{Identity: a, IngressDefaultDeny: true, Entries: []policies.Entry{allow(newID, 80)}},
		{Identity: newID},
	}}
	if _, n := deferPeers(cur, removed); n != 0 {
		t.Errorf("an entry removal was deferred")
	}
	if _, n := deferPeers(cur, cur); n != 0 {
		t.Errorf("deferred without a new identity")
	}
}

// With enforcement = "never" an endpoint still gets both enforce flags
// (its model is empty, so everything is allowed): an endpoint without them
// is passed before conntrack, and when enforcement came on, the replies of
// a connection opened meanwhile were judged as new flows and dropped
// (decision 75; bpf's TestEnforcementSwitchJudgesTrackedConnections runs
// the traffic).
func TestEndpointFlagsEnforceWhateverTheEnforcement(t *testing.T) {
	both := bpf.EnforceIngress | bpf.EnforceEgress
	for _, mode := range []string{config.EnforcementDefault, config.EnforcementAlways, config.EnforcementNever} {
		r := &reconciler{cfg: &config.Config{Enforcement: mode}}
		if got := r.endpointFlags(&epState{}); got != both {
			t.Errorf("enforcement %q: flags %v, want %v", mode, got, both)
		}
		if got := r.endpointFlags(&epState{audit: true}); got != both|bpf.Audit {
			t.Errorf("enforcement %q, audited endpoint: flags %v, want %v", mode, got, both|bpf.Audit)
		}
	}
}
