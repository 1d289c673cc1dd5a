package policies

import (
	"net/netip"
	"sort"
)

// Policy returns the compiled policy of a local identity.
func (m *Model) Policy(local Identity) (*IdentityPolicy, bool) {
	i := sort.Search(len(m.Identities), func(i int) bool { return m.Identities[i].Identity >= local })
	if i < len(m.Identities) && m.Identities[i].Identity == local {
		return &m.Identities[i], true
	}
	return nil, false
}

// Lookup implements the lookup contract of the model (see model.go): the
// longest (Proto, Port/PortPrefix) match among the entries for remote, then,
// when none matched, among the wildcard-remote entries. For ICMP and ICMPv6
// port is the ICMP type.
func (m *Model) Lookup(local, remote Identity, dir Direction, proto Proto, port uint16) (Entry, bool) {
	ip, ok := m.Policy(local)
	if !ok {
		return Entry{}, false
	}
	if e, ok := longestMatch(ip.Entries, remote, dir, proto, port); ok {
		return e, true
	}
	if remote != IdentityAny {
		return longestMatch(ip.Entries, IdentityAny, dir, proto, port)
	}
	return Entry{}, false
}

// longestMatch scans the (sorted) entries of one direction and remote.
func longestMatch(entries []Entry, remote Identity, dir Direction, proto Proto, port uint16) (Entry, bool) {
	i := sort.Search(len(entries), func(i int) bool {
		e := entries[i]
		return e.Direction > dir || (e.Direction == dir && e.Remote >= remote)
	})
	best, bestRank := Entry{}, -1
	for ; i < len(entries) && entries[i].Direction == dir && entries[i].Remote == remote; i++ {
		e := entries[i]
		rank := -1
		switch {
		case e.Proto == ProtoAny && e.PortPrefix == 0:
			rank = 0
		case e.Proto == proto && portPrefixMatches(e.Port, e.PortPrefix, port):
			rank = 1 + int(e.PortPrefix)
		}
		if rank > bestRank {
			best, bestRank = e, rank
		}
	}
	return best, bestRank >= 0
}

func portPrefixMatches(prefix uint16, bits uint8, port uint16) bool {
	if bits > 16 {
		return false
	}
	shift := 16 - uint32(bits)
	return uint32(prefix)>>shift == uint32(port)>>shift
}

// Verdict is the datapath's decision for one direction at one local
// identity, with default deny and audit: VerdictAllowed, VerdictRedirect
// (allowed through the L7 proxy, entry.L7 names the ruleset), VerdictDenied,
// or VerdictAudit (a drop let through). The entry is the one that decided
// (zero when none matched). A local identity the model does not know has no
// policy: allowed.
func (m *Model) Verdict(local, remote Identity, dir Direction, proto Proto, port uint16) (Verdict, Entry) {
	ip, ok := m.Policy(local)
	if !ok {
		return VerdictAllowed, Entry{}
	}
	e, found := m.Lookup(local, remote, dir, proto, port)
	switch {
	case found && e.Action == Deny:
		if e.Audit || ip.Audit {
			return VerdictAudit, e
		}
		return VerdictDenied, e
	case found && e.L7 != 0:
		return VerdictRedirect, e
	case found:
		return VerdictAllowed, e
	}
	dd := ip.IngressDefaultDeny
	if dir == Egress {
		dd = ip.EgressDefaultDeny
	}
	if !dd {
		return VerdictAllowed, Entry{}
	}
	if ip.Audit {
		return VerdictAudit, Entry{}
	}
	return VerdictDenied, Entry{}
}

// AddrIdentity is the identity the ipcache gives an address that is neither
// an endpoint's nor the host's: the CIDR identity of the longest named prefix
// holding it, or IdentityWorld when no policy names such a prefix.
func (m *Model) AddrIdentity(addr netip.Addr) Identity {
	addr = peerAddr(addr)
	best, bestBits := IdentityWorld, -1
	for _, c := range m.CIDRs {
		if c.Prefix.Contains(addr) && c.Prefix.Bits() > bestBits {
			best, bestBits = c.Identity, c.Prefix.Bits()
		}
	}
	return best
}
