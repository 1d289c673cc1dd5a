package policies

import (
	"regexp"
	"testing"
)

func TestHTTPFieldAlias(t *testing.T) {
	for _, c := range []struct {
		field, judged string
		alias         bool
	}{
		{"X_Tenant", "X-Tenant", true},
		{"x_tenant", "X-Tenant", true},
		{"X-Tenant", "X_Tenant", true},
		{"X-Api_Key", "X-Api-Key", true},
		{"X-Tenant", "X-Tenant", false},
		{"x-tenant", "X-Tenant", false},
		{"X_Tenant", "X_Tenant", false},
		{"X_Tenants", "X-Tenant", false},
		{"X_Tenan", "X-Tenant", false},
		{"X.Tenant", "X-Tenant", true},
		{"x~tenant", "X-Tenant", true},
		{"X+Tenant", "X_Tenant", true},
		{"X.Tenant", "X.Tenant", false},
		{"X.Tenant", "XaTenant", false},
		{"X1Tenant", "X-Tenant", false},
		{"Y_Tenant", "X-Tenant", false},
	} {
		if got := HTTPFieldAlias(c.field, c.judged) != ""; got != c.alias {
			t.Errorf("HTTPFieldAlias(%q, %q) refuses %v, want %v", c.field, c.judged, got, c.alias)
		}
	}
}

// TestCombineL7PrefersTheBadRequest: the proxies refuse a bad request
// (400) before either end's rules judge it, so a trace shows the 400 when
// one end refuses it so and the other end's rules refuse it with 403.
func TestCombineL7PrefersTheBadRequest(t *testing.T) {
	bad := &L7Result{Redirect: true, HTTP: &HTTPVerdict{Verdict: "400", Reason: "r"}}
	denied := &L7Result{Redirect: true, HTTP: &HTTPVerdict{Verdict: "403"}}
	allowed := &L7Result{Redirect: true, HTTP: &HTTPVerdict{Verdict: "allowed"}}
	for _, c := range []struct {
		a, b *L7Result
		want string
	}{
		{denied, bad, "400"}, {bad, denied, "400"}, {allowed, denied, "403"}, {denied, allowed, "403"}, {allowed, allowed, "allowed"},
	} {
		if got := combineL7(c.a, c.b).HTTP.Verdict; got != c.want {
			t.Errorf("combineL7(%s, %s) = %s, want %s", c.a.HTTP.Verdict, c.b.HTTP.Verdict, got, c.want)
		}
	}
}

// TestHTTPForwardedHostsMatch: every host a request names for servers
// behind proxies must match the rule's host pattern: each element of each
// X-Forwarded-Host, each value after "host" and '=' in Forwarded wherever
// it stands (as Rack and Spring find them), judged as Host is, in lower
// case.
func TestHTTPForwardedHostsMatch(t *testing.T) {
	host := regexp.MustCompile(`(?i)^(?:api\.example\.com|fd00::1)$`)
	for _, c := range []struct {
		xfh, fwd []string
		match    bool
	}{
		{nil, nil, true},
		{[]string{"api.example.com"}, nil, true},
		{[]string{"api.example.com:8443"}, nil, true},
		{[]string{" api.example.com , api.example.com:80 "}, nil, true},
		{[]string{"[fd00::1]:80"}, nil, true},
		{[]string{"fd00::1"}, nil, false},                         // an IPv6 address without brackets is no host
		{[]string{"admin.internal"}, nil, false},                  // another host
		{[]string{"api.example.com, admin.internal"}, nil, false}, // Rack takes the last
		{[]string{"admin.internal,api.example.com"}, nil, false},  // Express the first
		{[]string{"api.example.com", "admin.internal"}, nil, false},
		{[]string{"API.example.com"}, nil, false}, // upper case, as decision 34
		{[]string{"api.example.com:x"}, nil, false},
		{[]string{""}, nil, false},
		{nil, []string{"for=192.0.2.1;proto=https"}, true},
		{nil, []string{`for=192.0.2.1;host="api.example.com:443"`}, true},
		{nil, []string{`Host = " api.example.com "`}, true},
		{nil, []string{"host=admin.internal"}, false},
		{nil, []string{"HOST=admin.internal"}, false},
		{nil, []string{`for="_x;host=admin.internal"`}, false}, // Rack splits inside quotes
		{nil, []string{"xhost=admin.internal"}, false},         // Spring finds host= anywhere
		{nil, []string{"host=api.example.com, host=admin.internal"}, false},
		{nil, []string{"host=api.example.com host=admin.internal"}, false},
		{nil, []string{"hostname=x;by=host"}, true},
		{[]string{"api.example.com"}, []string{"host=admin.internal"}, false},
	} {
		if got := HTTPForwardedHostsMatch(host, c.xfh, c.fwd); got != c.match {
			t.Errorf("X-Forwarded-Host %q, Forwarded %q: %v, want %v", c.xfh, c.fwd, got, c.match)
		}
	}
	if n := testing.AllocsPerRun(100, func() { HTTPForwardedHostsMatch(host, nil, nil) }); n != 0 {
		t.Errorf("without the fields: %v allocations, want none", n)
	}
}

// TestHTTPPathOverride: X-Original-URL and X-Rewrite-URL, which servers
// behind IIS's URL Rewrite (old Symfony, Zend) route by, in any case and
// any spelling of their separators; other names pass, without allocating.
func TestHTTPPathOverride(t *testing.T) {
	for _, c := range []struct {
		field  string
		refuse bool
	}{
		{"X-Original-URL", true},
		{"x-original-url", true},
		{"X_Original_Url", true},
		{"X.Original~URL", true},
		{"X-Rewrite-URL", true},
		{"x_rewrite_url", true},
		{"X-Original-URLs", false},
		{"X-Original-URI", false},
		{"XOriginal-URL", false},
		{"X-Forwarded-Host", false},
	} {
		if got := HTTPPathOverride(c.field) != ""; got != c.refuse {
			t.Errorf("HTTPPathOverride(%q) refuses %v, want %v", c.field, got, c.refuse)
		}
	}
	name := []byte("X-Request-Id")
	if n := testing.AllocsPerRun(100, func() { HTTPPathOverride(name) }); n != 0 {
		t.Errorf("another field: %v allocations, want none", n)
	}
}
