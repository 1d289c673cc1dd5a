package policies

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func mustParse(t *testing.T, src string) *Set {
	t.Helper()
	set, rep := Parse(Source{Name: "t.hcl", Bytes: []byte(src)})
	if err := rep.Err(); err != nil {
		t.Fatalf("unexpected errors:\n%v", err)
	}
	return set
}

func TestRuleFieldsFilledFromSpecExample(t *testing.T) {
	set := mustParse(t, `
policy "api" {
  description = "frontend may call the API"
  selector    = "app=api"

  ingress {
    from_endpoints = ["app=frontend", "role=admin"]
    from_cidr      = ["10.0.0.0/8", "2001:db8::/32"]
    except         = ["10.9.0.0/16"]
    from_entities  = ["host"]
    ports          = ["8080/tcp", "9000-9100/udp", "53"]
    icmp           = ["echo-request", "3"]
    icmpv6         = ["echo-request", "135"]
  }
  egress_deny {
    to_cidr = ["169.254.169.254/32"]
  }
}
`)
	if len(set.Policies) != 1 {
		t.Fatalf("got %d policies", len(set.Policies))
	}
	p := set.Policies[0]
	if p.Name != "api" || p.Description != "frontend may call the API" || !p.DefaultDeny {
		t.Errorf("policy = %+v", p)
	}
	if p.Pos != (Position{File: "t.hcl", Line: 2, Column: 1}) {
		t.Errorf("policy pos %v", p.Pos)
	}
	if p.Selector.Source != "app=api" || !reflect.DeepEqual(p.Selector.Requirements, []Requirement{{Key: "app", Op: OpEquals, Values: []string{"api"}}}) {
		t.Errorf("selector %+v", p.Selector)
	}
	if len(p.Rules) != 2 {
		t.Fatalf("got %d rules", len(p.Rules))
	}
	in, deny := p.Rules[0], p.Rules[1]
	if in.ID != 1 || in.Policy != p || in.Block != "ingress" || in.Direction != Ingress || in.Action != Allow {
		t.Errorf("ingress rule header %+v", in)
	}
	if in.Pos != (Position{File: "t.hcl", Line: 6, Column: 3}) {
		t.Errorf("ingress pos %v", in.Pos)
	}
	if deny.ID != 2 || deny.Block != "egress_deny" || deny.Direction != Egress || deny.Action != Deny {
		t.Errorf("deny rule header %+v", deny)
	}
	if len(in.Endpoints) != 2 || in.Endpoints[1].Source != "role=admin" {
		t.Errorf("endpoints %+v", in.Endpoints)
	}
	wantCIDR := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	if !reflect.DeepEqual(in.CIDRs, wantCIDR) || !reflect.DeepEqual(in.Except, []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}) {
		t.Errorf("cidrs %v except %v", in.CIDRs, in.Except)
	}
	if !reflect.DeepEqual(in.Entities, []Entity{EntityHost}) {
		t.Errorf("entities %v", in.Entities)
	}
	wantPorts := []PortRange{
		{ProtoTCP, 8080, 8080},
		{ProtoUDP, 9000, 9100},
		{ProtoTCP, 53, 53}, {ProtoUDP, 53, 53}, {ProtoSCTP, 53, 53},
	}
	if !reflect.DeepEqual(in.Ports, wantPorts) {
		t.Errorf("ports %v, want %v", in.Ports, wantPorts)
	}
	if !reflect.DeepEqual(in.ICMP, []uint8{8, 3}) || !reflect.DeepEqual(in.ICMPv6, []uint8{128, 135}) {
		t.Errorf("icmp %v icmpv6 %v", in.ICMP, in.ICMPv6)
	}
	if !in.HasPeer() || !in.HasL4() || in.NeverMatches() {
		t.Errorf("HasPeer/HasL4/NeverMatches wrong")
	}
}

func TestPortForms(t *testing.T) {
	tcp, udp, sctp := ProtoTCP, ProtoUDP, ProtoSCTP
	for _, tc := range []struct {
		in   string
		want []PortRange
		err  string
	}{
		{in: "80/tcp", want: []PortRange{{tcp, 80, 80}}},
		{in: "80/TCP", want: []PortRange{{tcp, 80, 80}}},
		{in: "53/udp", want: []PortRange{{udp, 53, 53}}},
		{in: "2905/sctp", want: []PortRange{{sctp, 2905, 2905}}},
		{in: "53", want: []PortRange{{tcp, 53, 53}, {udp, 53, 53}, {sctp, 53, 53}}},
		{in: "53/any", want: []PortRange{{tcp, 53, 53}, {udp, 53, 53}, {sctp, 53, 53}}},
		{in: "1-65535/tcp", want: []PortRange{{tcp, 1, 65535}}},
		{in: "9000-9000", want: []PortRange{{tcp, 9000, 9000}, {udp, 9000, 9000}, {sctp, 9000, 9000}}},
		{in: "0", err: "port 0 is not allowed"},
		{in: "65536/tcp", err: "out of range"},
		{in: "99999999999999999999", err: "out of range"},
		{in: "10-5", err: "backwards"},
		{in: "80/icmp", err: "ICMP has no ports"},
		{in: "80/icmpv6", err: "ICMP has no ports"},
		{in: "80/", err: "missing protocol"},
		{in: "80/quic", err: `unknown protocol "quic"`},
		{in: "", err: "missing port number"},
		{in: "-80", err: "missing port number"},
		{in: "80-", err: "missing port number"},
		{in: "+80", err: "not a port number"},
		{in: " 80", err: "not a port number"},
		{in: "1-2-3", err: "not a port number"},
	} {
		got, err := ParsePort(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParsePort(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParsePort(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

// The two ICMP families number the same names differently.
func TestICMPNamesPerFamily(t *testing.T) {
	v4 := map[string]uint8{"echo-reply": 0, "destination-unreachable": 3, "redirect": 5, "echo-request": 8, "time-exceeded": 11, "parameter-problem": 12, "0": 0, "255": 255, "Echo-Request": 8}
	v6 := map[string]uint8{"destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "parameter-problem": 4, "echo-request": 128, "echo-reply": 129, "router-solicitation": 133, "router-advertisement": 134, "neighbor-solicitation": 135, "neighbor-advertisement": 136, "7": 7}
	for name, want := range v4 {
		if got, err := ParseICMPType(name, false); err != nil || got != want {
			t.Errorf("icmp %q = %d, %v; want %d", name, got, err, want)
		}
	}
	for name, want := range v6 {
		if got, err := ParseICMPType(name, true); err != nil || got != want {
			t.Errorf("icmpv6 %q = %d, %v; want %d", name, got, err, want)
		}
	}
	for _, tc := range []struct {
		in  string
		v6  bool
		err string
	}{
		{"256", false, "out of range"},
		{"1000", true, "out of range"},
		{"packet-too-big", false, "write it in icmpv6"},
		{"redirect", true, "write it in icmp"},
		{"echo", false, "unknown ICMPv4 type"},
		{"-1", false, "unknown"},
		{"", true, "unknown"},
	} {
		if _, err := ParseICMPType(tc.in, tc.v6); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseICMPType(%q, %v) error %v, want %q", tc.in, tc.v6, err, tc.err)
		}
	}
}

func TestHTTPRulesAnchoredAndCanonical(t *testing.T) {
	set := mustParse(t, `
policy "web" {
  selector = "app=web"
  ingress {
    ports = ["80/tcp"]
    http {
      method  = "GET|HEAD"
      path    = "/api/.*"
      headers = { x-tenant = "acme", "x-any" = "" }
    }
    http {}
  }
}`)
	r := set.Policies[0].Rules[0]
	if len(r.HTTP) != 2 {
		t.Fatalf("got %d http rules", len(r.HTTP))
	}
	h := r.HTTP[0]
	if h.MethodSrc != "GET|HEAD" || h.PathSrc != "/api/.*" || h.HostSrc != "" || h.Host != nil {
		t.Errorf("sources %+v", h)
	}
	for s, want := range map[string]bool{"GET": true, "HEAD": true, "GETX": false, "xGET": false, "POST": false} {
		if h.Method.MatchString(s) != want {
			t.Errorf("method %q match = %v, want %v (must be anchored)", s, !want, want)
		}
	}
	if h.Path.MatchString("/x/api/y") || !h.Path.MatchString("/api/y") {
		t.Errorf("path not anchored: %s", h.Path)
	}
	if !reflect.DeepEqual(h.Headers, map[string]string{"X-Tenant": "acme", "X-Any": ""}) {
		t.Errorf("headers %v", h.Headers)
	}
	if h.Pos.Line != 6 || h.Pos.Column != 5 {
		t.Errorf("http pos %v", h.Pos)
	}
	if e := r.HTTP[1]; e.Method != nil || e.Path != nil || e.Host != nil || len(e.Headers) != 0 {
		t.Errorf("empty http block should match anything: %+v", e)
	}
}

// TestHTTPHostPatternIgnoresCase: a host pattern matches the host in any
// case, as the hosts it names do, anchored all the same.
func TestHTTPHostPatternIgnoresCase(t *testing.T) {
	set := mustParse(t, `
policy "web" {
  selector = "app=web"
  ingress {
    ports = ["80/tcp"]
    http { host = "API\\.Example\\.com" }
  }
}`)
	h := set.Policies[0].Rules[0].HTTP[0]
	if h.HostSrc != `API\.Example\.com` {
		t.Errorf("host source %q", h.HostSrc)
	}
	for s, want := range map[string]bool{"api.example.com": true, "API.EXAMPLE.COM": true, "x.api.example.com": false, "api.example.com.x": false} {
		if h.Host.MatchString(s) != want {
			t.Errorf("host %q match = %v, want %v", s, !want, want)
		}
	}
}

func TestDefaultDenyDefaultsToTrue(t *testing.T) {
	set := mustParse(t, `
policy "a" { selector = "app=a" }
policy "b" {
  selector = "app=b"
  default_deny = false
}
policy "c" {
  selector = "app=c"
  default_deny = null
}`)
	got := []bool{set.Policies[0].DefaultDeny, set.Policies[1].DefaultDeny, set.Policies[2].DefaultDeny}
	if !reflect.DeepEqual(got, []bool{true, false, true}) {
		t.Errorf("DefaultDeny = %v", got)
	}
}

func TestCIDRBareAddressAndHostBits(t *testing.T) {
	set, rep := Parse(Source{Name: "t.hcl", Bytes: []byte(`
policy "a" {
  selector = "app=a"
  egress { to_cidr = ["192.0.2.1", "2001:db8::1", "10.1.2.3/8"] }
}`)})
	if rep.HasErrors() {
		t.Fatal(rep.Err())
	}
	want := []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("2001:db8::1/128"), netip.MustParsePrefix("10.0.0.0/8")}
	if got := set.Policies[0].Rules[0].CIDRs; !reflect.DeepEqual(got, want) {
		t.Errorf("CIDRs %v, want %v", got, want)
	}
	if w := rep.Warnings(); len(w) != 1 || !strings.Contains(w[0].Summary, "host bits") || w[0].Pos.Column != 51 {
		t.Errorf("warnings %v", w)
	}
	for _, bad := range []string{"10.0.0.0/33", "fe80::1%eth0", "10.0.0", "", "::/129", "10.0.0.0/-1"} {
		if _, _, err := ParsePrefix(bad); err == nil {
			t.Errorf("ParsePrefix(%q) accepted", bad)
		}
	}
}

// An empty peer or port list names nothing: the rule stays (for
// default-deny) but can never match, which NeverSelector encodes.
func TestEmptyListsMakeRuleThatNeverMatches(t *testing.T) {
	set, rep := Parse(Source{Name: "t.hcl", Bytes: []byte(`
policy "a" {
  selector = "app=a"
  ingress { from_endpoints = [] }
  egress {
    to_cidr = []
    except  = ["10.0.0.0/8"]
  }
  ingress_deny { ports = [] }
  egress_deny {
    to_endpoints = []
    to_cidr      = ["10.0.0.0/8"]
  }
  ingress {
    ports = []
    icmp  = ["echo-request"]
  }
}`)})
	if rep.HasErrors() {
		t.Fatal(rep.Err())
	}
	rules := set.Policies[0].Rules
	for i, want := range []bool{true, true, true, false, false} {
		if got := rules[i].NeverMatches(); got != want {
			t.Errorf("rule %d (%s at %s): NeverMatches = %v, want %v", i, rules[i].Block, rules[i].Pos, got, want)
		}
	}
	if len(rep.Warnings()) != 3 {
		t.Errorf("want 3 warnings, got:\n%s", dump(rep))
	}
	never := NeverSelector()
	for _, labels := range []Labels{nil, {}, {"app": "a"}, {"membrane.never": ""}} {
		if never.Matches(labels) {
			t.Errorf("NeverSelector matches %v", labels)
		}
	}
	if !rules[0].HasPeer() {
		t.Error("a never-matching rule must have a peer condition, or consumers would treat it as matching every peer")
	}
}

func TestSetRejectedWholeOnAnyError(t *testing.T) {
	set, rep := Parse(
		Source{Name: "a.hcl", Bytes: []byte(`policy "a" { selector = "app=a" }`)},
		Source{Name: "b.hcl", Bytes: []byte("policy \"b\" {\n  selector = \"app=\"\n  ingress { ports = [\"0\"] }\n}\n")},
	)
	if set != nil {
		t.Fatal("a set with an error must be rejected whole")
	}
	err := rep.Err()
	if err == nil || err.Error() != `b.hcl:3:22: error: Invalid port "0": port 0 is not allowed; ports are 1-65535` {
		t.Errorf("Err() = %q", err)
	}
}

func TestRuleIDsFollowFileThenBlockOrder(t *testing.T) {
	set := mustParse(t, "")
	if len(set.Policies) != 0 {
		t.Fatal("empty source should give an empty set")
	}
	set, rep := Parse(
		Source{Name: "1.hcl", Bytes: []byte("policy \"x\" {\n selector = \"\"\n egress {}\n ingress {}\n}\n")},
		Source{Name: "2.hcl", Bytes: []byte("policy \"y\" {\n selector = \"\"\n ingress_deny {}\n}\npolicy \"z\" {\n selector = \"\"\n egress_deny {}\n}\n")},
	)
	if rep.HasErrors() {
		t.Fatal(rep.Err())
	}
	var got []string
	for _, r := range set.Rules() {
		got = append(got, r.Policy.Name+"/"+r.Block)
		if int(r.ID) != len(got) {
			t.Errorf("rule %s has ID %d, want %d", got[len(got)-1], r.ID, len(got))
		}
	}
	want := []string{"x/egress", "x/ingress", "y/ingress_deny", "z/egress_deny"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rules %v, want %v", got, want)
	}
}

func TestSelectorErrorPointsInsideEscapedStringConservatively(t *testing.T) {
	// With an escape before the error the byte offset no longer maps to
	// a column, so the diagnostic points at the string's start.
	_, rep := Parse(Source{Name: "t.hcl", Bytes: []byte(`policy "a" { selector = "a\u0062=c," }`)})
	errs := rep.Errors()
	if len(errs) != 1 || errs[0].Pos.Column != 25 {
		t.Errorf("errors %v", errs)
	}
	// Without escapes it points at the offending byte.
	_, rep = Parse(Source{Name: "t.hcl", Bytes: []byte("policy \"a\" {\n  description = \"é\"\n  selector = \"ab=c,,d\" # é\n}")})
	errs = rep.Errors()
	if len(errs) != 1 || errs[0].Pos.Column != 20 || errs[0].Pos.Line != 3 {
		t.Errorf("errors %v", errs)
	}
}

// The contract's diagnostic line is FILE:LINE:COL: error: SUMMARY, with a
// one-line summary: values quoted in a summary keep their line breaks
// escaped, or a CI script would read the rest of the value as a line of
// its own.
func TestDiagnosticSummariesAreOneLine(t *testing.T) {
	_, rep := Parse(Source{Name: "t.hcl", Bytes: []byte(`policy "a" {
  selector = "app=a\n!"
  ingress {
    from_entities = ["wo\nrld"]
    from_cidr     = ["10.0.0.0/8\n"]
    ports         = ["80\n/tcp"]
    icmp          = ["echo\nrequest"]
    http {
      method  = "GET\n("
      path    = "/a\n["
      host    = "a\n^b"
      headers = { "X\nY" = "a", "Z" = "b\nc" }
    }
  }
}
`)})
	if len(rep.Errors()) < 9 {
		t.Fatalf("want an error per bad value, got:\n%s", dump(rep))
	}
	for _, d := range rep.Diagnostics {
		if strings.ContainsAny(d.Summary, "\r\n") || strings.ContainsAny(d.String(), "\r\n") {
			t.Errorf("summary of more than one line: %q", d.String())
		}
	}
}
