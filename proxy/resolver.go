package proxy

import (
	"net/netip"
	"slices"

	"github.com/membrane-fw/membrane/policies"
)

// ModelResolver is the daemon's Resolver: it finds both ends' identities in
// the ipcache (longest prefix; a miss is world) and, for each end that is a
// local endpoint with policy, the L7 ruleset of the entry that admits the
// connection (policies.Model.Lookup, the datapath's contract). The model's
// entries must be sorted as the compiler emits them. It is immutable: build
// a new one and pass it to Engine.Update when the model or ipcache changes.
type ModelResolver struct {
	model     *policies.Model
	ipcache   map[netip.Prefix]policies.Identity
	lengths4  []int // prefix lengths present, longest first
	lengths6  []int
	ruleNames map[uint32]string
	networks  *Networks
}

// NewModelResolver builds a resolver. ipcache maps prefixes to identities
// (endpoint addresses as /32 or /128, host addresses, the model's CIDR
// identities are added from m.CIDRs). ruleNames maps rule ids to policy names
// (from the policy set: rule.ID -> rule.Policy.Name).
func NewModelResolver(m *policies.Model, ipcache map[netip.Prefix]policies.Identity, ruleNames map[uint32]string) *ModelResolver {
	r := &ModelResolver{
		model:     m,
		ipcache:   map[netip.Prefix]policies.Identity{},
		ruleNames: ruleNames,
	}
	if m != nil {
		for _, c := range m.CIDRs {
			r.ipcache[c.Prefix.Masked()] = c.Identity
		}
	}
	// Explicit ipcache entries (endpoints, host) win over CIDR identities of
	// the same prefix.
	for p, id := range ipcache {
		r.ipcache[p.Masked()] = id
	}
	seen4, seen6 := map[int]bool{}, map[int]bool{}
	for p := range r.ipcache {
		if p.Addr().Is4() {
			if !seen4[p.Bits()] {
				seen4[p.Bits()] = true
				r.lengths4 = append(r.lengths4, p.Bits())
			}
		} else if !seen6[p.Bits()] {
			seen6[p.Bits()] = true
			r.lengths6 = append(r.lengths6, p.Bits())
		}
	}
	slices.Sort(r.lengths4)
	slices.Reverse(r.lengths4)
	slices.Sort(r.lengths6)
	slices.Reverse(r.lengths6)
	return r
}

// Identity looks addr up in the ipcache: longest prefix, world on a miss.
func (r *ModelResolver) Identity(addr netip.Addr) policies.Identity {
	addr = addr.Unmap()
	lengths := r.lengths6
	if addr.Is4() {
		lengths = r.lengths4
	}
	for _, l := range lengths {
		p, _ := addr.Prefix(l)
		if id, ok := r.ipcache[p]; ok {
			return id
		}
	}
	return policies.IdentityWorld
}

// WithNetworks gives r the Docker networks of the endpoints, so that
// Resolve refuses what Docker keeps apart (see Isolated). Call it before
// handing r to an engine; it returns r.
func (r *ModelResolver) WithNetworks(n *Networks) *ModelResolver {
	r.networks = n
	return r
}

// Networks returns what WithNetworks gave (nil: none).
func (r *ModelResolver) Networks() *Networks { return r.networks }

// Resolve implements Resolver. A connection that Docker keeps apart gets
// its decision and an *IsolatedError (see Isolated).
func (r *ModelResolver) Resolve(src, dst netip.AddrPort) (Decision, error) {
	d := r.Decide(r.Identity(src.Addr()), r.Identity(dst.Addr()), dst.Port())
	if why := Isolated(r.networks, &d, src.Addr(), dst.Addr()); why != "" {
		return d, &IsolatedError{Reason: why}
	}
	return d, nil
}

// Isolated is why the proxy must not connect src to dst under decision d
// ("" when it may): the decision holds the client's egress check, so the
// datapath sent the connection here from the client's own veth, before
// Docker forwarded anything, and Docker would not let src reach dst
// (Networks.Reachable). A connection with the destination's ingress check
// only was redirected at the destination's veth: Docker had forwarded it
// there already, so L3 allowed it, and it is not judged again.
func Isolated(n *Networks, d *Decision, src, dst netip.Addr) string {
	if n == nil || !d.Has(policies.Egress) {
		return ""
	}
	if ok, why := n.Reachable(src, dst); !ok {
		return why
	}
	return ""
}

// Decide is Resolve at the level of identities: the checks for a TCP
// connection from src to dst on port.
func (r *ModelResolver) Decide(src, dst policies.Identity, port uint16) Decision {
	d := Decision{SrcIdentity: src, DstIdentity: dst}
	if c, ok := r.check(src, policies.Egress, dst, port); ok {
		d.Checks = append(d.Checks, c)
	}
	if c, ok := r.check(dst, policies.Ingress, src, port); ok {
		d.Checks = append(d.Checks, c)
	}
	return d
}

// check returns the L7 check that local's policy in dir puts on traffic
// with remote on TCP port, by the model's own lookup (the datapath's
// contract). A deny entry yields a check without rules, which denies every
// request: the datapath should not have sent such a connection here, but
// during a policy change it may have.
func (r *ModelResolver) check(local policies.Identity, dir policies.Direction, remote policies.Identity, port uint16) (Check, bool) {
	if r.model == nil {
		return Check{}, false
	}
	e, ok := r.model.Lookup(local, remote, dir, policies.ProtoTCP, port)
	if !ok {
		return Check{}, false
	}
	if e.Action == policies.Deny {
		return Check{Direction: dir}, true
	}
	if e.L7 == 0 {
		return Check{}, false
	}
	return Check{Direction: dir, Rules: r.model.L7[e.L7]}, true
}

// PolicyName implements Resolver.
func (r *ModelResolver) PolicyName(ruleID uint32) string { return r.ruleNames[ruleID] }

// Prefixes returns the ipcache grouped by identity, each list sorted; engines
// that compile policy ahead of time (Envoy) match sources by these.
func (r *ModelResolver) Prefixes() map[policies.Identity][]netip.Prefix {
	out := map[policies.Identity][]netip.Prefix{}
	for p, id := range r.ipcache {
		out[id] = append(out[id], p)
	}
	for id := range out {
		slices.SortFunc(out[id], comparePrefix)
	}
	return out
}

// L7Ports lists, sorted, every TCP port that some L7 entry of the model
// covers (an entry over a port range contributes every port of it, capped at
// 1024 ports per entry; wider L7 ranges are returned as truncated=true).
func (r *ModelResolver) L7Ports() (ports []uint16, truncated bool) {
	seen := map[uint16]bool{}
	if r.model == nil {
		return nil, false
	}
	for _, ip := range r.model.Identities {
		for _, e := range ip.Entries {
			if e.L7 == 0 || (e.Proto != policies.ProtoTCP && e.Proto != policies.ProtoAny) {
				continue
			}
			if e.Proto == policies.ProtoAny || e.PortPrefix < 6 {
				truncated = true
				continue
			}
			n := 1 << (16 - e.PortPrefix)
			for i := 0; i < n; i++ {
				seen[e.Port&(0xFFFF<<(16-e.PortPrefix))+uint16(i)] = true
			}
		}
	}
	for p := range seen {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	return ports, truncated
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// StaticResolver gives every connection the same decision; for tests and the
// conformance suite.
type StaticResolver struct {
	Decision Decision
	Names    map[uint32]string
}

// Resolve implements Resolver.
func (s *StaticResolver) Resolve(src, dst netip.AddrPort) (Decision, error) { return s.Decision, nil }

// PolicyName implements Resolver.
func (s *StaticResolver) PolicyName(id uint32) string { return s.Names[id] }

// RuleNames maps every rule id of set to its policy's name, for
// NewModelResolver.
func RuleNames(set *policies.Set) map[uint32]string {
	out := map[uint32]string{}
	if set == nil {
		return out
	}
	for _, p := range set.Policies {
		for _, r := range p.Rules {
			out[r.ID] = p.Name
		}
	}
	return out
}
