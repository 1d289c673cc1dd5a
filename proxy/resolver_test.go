package proxy

import (
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"testing"

	"github.com/membrane-fw/membrane/policies"
)

func set(id uint32, path string) policies.L7Set {
	return policies.L7Set{Rules: []policies.L7Rule{{RuleID: id, HTTP: policies.HTTPRule{Path: regexp.MustCompile("^(?:" + path + ")$")}}}}
}

func testModel() *policies.Model {
	return &policies.Model{
		Identities: []policies.IdentityPolicy{
			{Identity: 300, Entries: []policies.Entry{ // the client: egress to 400 on 80 is L7-checked
				{Direction: policies.Egress, Remote: 400, Proto: policies.ProtoTCP, Port: 80, PortPrefix: 16, L7: 1, RuleID: 1},
			}},
			{Identity: 400, Entries: []policies.Entry{ // the server
				// Sorted as the compiler emits them: (Direction, Remote, Proto, Port, PortPrefix).
				{Direction: policies.Ingress, Remote: policies.IdentityAny, Proto: policies.ProtoTCP, Port: 80, PortPrefix: 15, L7: 3, RuleID: 3},
				// A narrower plain allow lifts L7 for port 81 from anyone.
				{Direction: policies.Ingress, Remote: policies.IdentityAny, Proto: policies.ProtoTCP, Port: 81, PortPrefix: 16, RuleID: 4},
				{Direction: policies.Ingress, Remote: 300, Proto: policies.ProtoTCP, Port: 80, PortPrefix: 16, L7: 2, RuleID: 2},
				{Direction: policies.Ingress, Remote: 500, Proto: policies.ProtoAny, Action: policies.Deny, RuleID: 5},
			}},
		},
		CIDRs: []policies.CIDRIdentity{{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Identity: policies.FirstCIDR}},
		L7:    map[uint32]policies.L7Set{1: set(1, "/out/.*"), 2: set(2, "/in/.*"), 3: set(3, "/any/.*")},
	}
}

func TestModelResolverCombinesBothEndsAndLongestMatch(t *testing.T) {
	r := NewModelResolver(testModel(), map[netip.Prefix]policies.Identity{
		netip.MustParsePrefix("10.0.0.3/32"):  300,
		netip.MustParsePrefix("10.0.0.4/32"):  400,
		netip.MustParsePrefix("10.0.0.0/24"):  500,
		netip.MustParsePrefix("fd00::4/128"):  400,
		netip.MustParsePrefix("192.0.2.9/32"): 600,
	}, map[uint32]string{1: "client", 2: "server"})
	ap := netip.MustParseAddrPort
	cases := []struct {
		name     string
		src, dst string
		wantSrc  policies.Identity
		checks   []uint32 // first rule id of each check; 0 = a deny-all check
	}{
		{"both ends check", "10.0.0.3:5555", "10.0.0.4:80", 300, []uint32{1, 2}},
		{"IPv6 and mapped", "[::ffff:10.0.0.3]:5555", "[fd00::4]:80", 300, []uint32{1, 2}},
		{"wildcard remote, port range", "198.51.100.1:1", "10.0.0.4:80", policies.IdentityWorld, []uint32{3}},
		{"plain allow lifts L7", "198.51.100.1:1", "10.0.0.4:81", policies.IdentityWorld, nil},
		{"LPM: /24 beats world", "10.0.0.77:1", "10.0.0.4:80", 500, []uint32{0}},
		{"CIDR identity from the model", "192.0.2.1:1", "10.0.0.4:82", policies.FirstCIDR, nil},
		{"explicit /32 beats CIDR /24", "192.0.2.9:1", "10.0.0.4:80", 600, []uint32{3}},
	}
	for _, c := range cases {
		d, err := r.Resolve(ap(c.src), ap(c.dst))
		if err != nil {
			t.Fatal(err)
		}
		if d.SrcIdentity != c.wantSrc {
			t.Errorf("%s: src identity %d, want %d", c.name, d.SrcIdentity, c.wantSrc)
		}
		var got []uint32
		for _, ch := range d.Checks {
			if len(ch.Rules.Rules) == 0 {
				got = append(got, 0)
			} else {
				got = append(got, ch.Rules.Rules[0].RuleID)
			}
		}
		if !slices.Equal(got, c.checks) {
			t.Errorf("%s: checks %v, want %v", c.name, got, c.checks)
		}
	}
	// Both checks must allow.
	d, _ := r.Resolve(ap("10.0.0.3:5555"), ap("10.0.0.4:80"))
	for path, wantDenied := range map[string]policies.Direction{"/out/x": policies.Ingress, "/in/x": policies.Egress} {
		_, by, allowed := d.Verdict(&Request{Method: "GET", Path: path})
		if allowed || by == nil || by.Direction != wantDenied {
			t.Errorf("%s: allowed %v by %+v, want denied by the %s check", path, allowed, by, wantDenied)
		}
	}
	// Allowed by both: the last check (ingress) decided, and its rule is
	// the one reported.
	both := Decision{Checks: []Check{
		{Direction: policies.Egress, Rules: set(7, "/.*")},
		{Direction: policies.Ingress, Rules: set(8, "/in/.*")},
	}}
	if id, by, allowed := both.Verdict(&Request{Method: "GET", Path: "/in/x"}); !allowed || by == nil || by.Direction != policies.Ingress || id != 8 {
		t.Errorf("/in/x: rule %d, allowed %v by %+v; want allowed by ingress rule 8", id, allowed, by)
	}
	if _, by, allowed := (&Decision{}).Verdict(&Request{Method: "GET", Path: "/"}); !allowed || by != nil {
		t.Errorf("no checks: allowed %v by %+v, want allowed by none", allowed, by)
	}
	if names := PolicyNames(r, &d.Checks[0]); !slices.Equal(names, []string{"client"}) {
		t.Errorf("PolicyNames = %v", names)
	}
	ports, truncated := r.L7Ports()
	if !slices.Equal(ports, []uint16{80, 81}) || truncated {
		t.Errorf("L7Ports = %v %v, want [80 81] false", ports, truncated)
	}
	if p := r.Prefixes()[400]; len(p) != 2 {
		t.Errorf("Prefixes()[400] = %v", p)
	}
}

func TestMatchNormalizesPathAndHost(t *testing.T) {
	for in, want := range map[string]string{
		"": "/", "/": "/", "/a/../b": "/b", "/a//b/": "/a/b/", "/../../etc": "/etc", "/a/./b/..": "/a/", "x": "/x",
		// As Envoy: dot segments first (".." takes out an empty segment
		// too), then repeated slashes.
		"/public//../admin": "/public/admin", "/api/v1/..": "/api/", "/api/.": "/api/", "/a/b/../../..": "/",
		"//x//y/": "/x/y/", "/a/.//./b": "/a/b", "/.hidden/x": "/.hidden/x", "/a/..b": "/a/..b",
	} {
		if got := NormalizePath(in); got != want {
			t.Errorf("NormalizePath(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{
		"API.example.com": "api.example.com", "api.example.com:8080": "api.example.com", "[fd00::1]:80": "fd00::1", "[fd00::1]": "fd00::1",
		// Brackets come off an IPv6 literal only.
		"[API.example.com]": "[api.example.com]", "[api.example.com]:8080": "[api.example.com]", "[192.0.2.1]": "[192.0.2.1]",
	} {
		if got := MatchHost(in); got != want {
			t.Errorf("MatchHost(%q) = %q, want %q", in, got, want)
		}
	}
}

// A header's repeated field lines are judged joined with ",", as Envoy
// matches them: a second value the server might read instead does not pass
// an exact-value rule.
func TestHeaderRuleJudgesEveryFieldLine(t *testing.T) {
	rule := policies.HTTPRule{Headers: map[string]string{"X-A": "1", "X-B": ""}}
	for _, c := range []struct {
		h    http.Header
		want bool
	}{
		{http.Header{"X-A": {"1"}, "X-B": {""}}, true},
		{http.Header{"X-A": {"0", "1"}, "X-B": {"z"}}, false},
		{http.Header{"X-A": {"1", "1"}, "X-B": {"z"}}, false},
		{http.Header{"X-A": {"1"}, "X-B": {"y", "z"}}, true},
		{http.Header{"X-A": {"2"}, "X-B": {"z"}}, false},
		{http.Header{"X-A": {"1"}}, false},
	} {
		if got := MatchRule(&rule, &Request{Headers: c.h}); got != c.want {
			t.Errorf("headers %v: match %v, want %v", c.h, got, c.want)
		}
	}
}
