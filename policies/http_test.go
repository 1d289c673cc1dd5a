package policies

import "testing"

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
