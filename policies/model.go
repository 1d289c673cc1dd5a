package policies

import "net/netip"

// Model is the compiled policy, what the datapath enforces: per local identity and
// direction, a list of entries keyed like the BPF policy map (remote identity,
// protocol, port/prefix). It is pure data, deterministic for the same inputs.
//
// Lookup contract (the datapath and Model.Lookup implement exactly this):
//  1. Among the entries of (local identity, direction) whose Remote equals the
//     packet's remote identity, take the longest match on (Proto, Port/PortPrefix)
//     where Proto=ProtoAny with PortPrefix=0 matches every protocol and port, a
//     specific Proto with PortPrefix=0 matches every port of that protocol, and
//     PortPrefix=16 is one exact port (ICMP/ICMPv6 entries carry the type in Port,
//     always with PortPrefix 16).
//  2. If nothing matched, do the same among the entries whose Remote is IdentityAny.
//  3. The entry found decides: Deny drops, Allow passes (redirecting to the proxy
//     when L7 != 0). With no entry, the packet passes unless the direction is in
//     default-deny.
//
// The compiler resolves precedence ahead of time so that this two-step longest
// match gives the policy language's verdict: every entry already folds in every
// broader entry that covers it (deny wins; an allow without L7 lifts L7; two L7
// allows merge their rulesets), and every wildcard-remote entry that overlaps a
// remote identity's entries is copied into that identity's entries.
type Model struct {
	Identities []IdentityPolicy // sorted by Identity
	CIDRs      []CIDRIdentity   // ipcache entries for prefixes that policies name, sorted by Identity
	L7         map[uint32]L7Set // L7 ruleset id -> rules; ids start at 1
}

// IdentityPolicy is the policy of one local identity.
type IdentityPolicy struct {
	Identity           Identity
	IngressDefaultDeny bool
	EgressDefaultDeny  bool
	Audit              bool    // would-be drops pass and are reported as audit
	Entries            []Entry // sorted by (Direction, Remote, Proto, Port, PortPrefix)
}

// Entry is one policy map entry.
type Entry struct {
	Direction  Direction
	Remote     Identity // IdentityAny for every remote
	Proto      Proto    // ProtoAny for every protocol (then PortPrefix is 0)
	Port       uint16   // first port of the range (or ICMP type)
	PortPrefix uint8    // 0..16: how many leading bits of Port are fixed
	Action     Action
	L7         uint32 // L7 ruleset id, 0 for none (only with Allow)
	Audit      bool
	RuleID     uint32 // the rule that decided (for deny: a deny rule)
}

// CIDRIdentity is an ipcache entry the compiler allocated for a prefix that a
// policy names (in from_cidr, to_cidr or except).
type CIDRIdentity struct {
	Prefix   netip.Prefix
	Identity Identity
}

// L7Set is the union of the http blocks of the allow rules that admit a
// connection, each with the rule it came from.
type L7Set struct {
	Rules []L7Rule
}

// L7Rule is one http block and the rule that holds it.
type L7Rule struct {
	RuleID uint32
	HTTP   HTTPRule
}
