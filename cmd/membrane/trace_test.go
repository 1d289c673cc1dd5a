package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
	"github.com/spf13/cobra"
)

const traceSemantics = "../../policies/testdata/semantics"

// traceCLI runs `membrane policy trace ARGS` in-process and returns stdout,
// stderr (including the error main would print) and the exit code. It sees
// no host address (TestTraceNotesAHostAddress sees one).
func traceCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	defer func(f func() []policies.HostAddr) { hostAddrs = f }(hostAddrs)
	hostAddrs = func() []policies.HostAddr { return nil }
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"policy", "trace"}, args...))
	err := root.Execute()
	code := 0
	if err != nil {
		code = 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		} else if isUsage(err) {
			code = 2
		}
		errOut.WriteString(err.Error())
	}
	return out.String(), errOut.String(), code
}

func TestTraceTextAllowedNamesTheRules(t *testing.T) {
	out, errOut, code := traceCLI(t, "--policies", filepath.Join(traceSemantics, "09-both-ends"),
		"--from-labels", "app=client", "--to-labels", "app=server", "--port", "443/tcp")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"verdict: allowed",
		"egress:  allowed (endpoint app=client, default-deny on)",
		`allow policy "client" egress at ../../policies/testdata/semantics/09-both-ends/policies.hcl:4`,
		"ingress: allowed (endpoint app=server, default-deny on)",
		`allow policy "server" ingress at ../../policies/testdata/semantics/09-both-ends/policies.hcl:12`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestTracePortProtocolIgnoresCase: --port takes the protocol in any case,
// as policies do (ports = ["443/TCP"] is valid).
func TestTracePortProtocolIgnoresCase(t *testing.T) {
	out, errOut, code := traceCLI(t, "--policies", filepath.Join(traceSemantics, "09-both-ends"),
		"--from-labels", "app=client", "--to-labels", "app=server", "--port", "443/TCP")
	if code != 0 || !strings.Contains(out, "verdict: allowed") {
		t.Fatalf("--port 443/TCP: exit %d, stdout %q, stderr %q; want the verdict of 443/tcp", code, out, errOut)
	}
}

func TestTraceDeniedStillExitsZero(t *testing.T) {
	out, errOut, code := traceCLI(t, "--policies", filepath.Join(traceSemantics, "09-both-ends"),
		"--from-entity", "world", "--to-labels", "app=server", "--port", "443/tcp")
	if code != 0 {
		t.Fatalf("exit %d for a denied connection: %s", code, errOut)
	}
	for _, want := range []string{"verdict: denied", "egress:  not-applicable", "no allow rule matched; ingress is in default-deny"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

type traceJSON struct {
	Verdict    string `json:"verdict"`
	Egress     string `json:"egress"`
	Ingress    string `json:"ingress"`
	Connection string `json:"connection"`
	Matched    []struct {
		Policy string `json:"policy"`
		Block  string `json:"block"`
		File   string `json:"file"`
		Line   int    `json:"line"`
	} `json:"matched"`
	L7 *struct {
		Redirect bool `json:"redirect"`
		HTTP     *struct {
			Verdict string `json:"verdict"`
		} `json:"http"`
	} `json:"l7"`
}

func traceJSONOf(t *testing.T, args ...string) traceJSON {
	t.Helper()
	out, errOut, code := traceCLI(t, append(args, "--format", "json")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var j traceJSON
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out)
	}
	return j
}

func TestTraceJSONContract(t *testing.T) {
	dir := filepath.Join(traceSemantics, "08-deny-precedence")
	j := traceJSONOf(t, "--policies", dir, "--from-labels", "role=intruder", "--to-labels", "app=web", "--port", "22/tcp")
	if j.Verdict != "denied" || j.Egress != "allowed" || j.Ingress != "denied" {
		t.Errorf("verdict/egress/ingress = %s/%s/%s, want denied/allowed/denied", j.Verdict, j.Egress, j.Ingress)
	}
	if len(j.Matched) != 2 || j.Matched[0].Policy != "deny-admin" || j.Matched[1].Policy != "deny-ssh" ||
		j.Matched[0].Block != "ingress_deny" || j.Matched[0].Line != 3 ||
		j.Matched[0].File != filepath.Join(dir, "05-early-deny.hcl") {
		t.Errorf("matched = %+v, want deny-admin (05-early-deny.hcl:3) then deny-ssh", j.Matched)
	}

	j = traceJSONOf(t, "--policies", dir, "--from-ip", "203.0.113.7", "--to-labels", "app=web", "--port", "80/tcp")
	if j.Verdict != "allowed" || j.Egress != "not-applicable" || j.Ingress != "allowed" || len(j.Matched) != 1 || j.Matched[0].Policy != "allow-all" {
		t.Errorf("world IP to web: %+v", j)
	}
}

func TestTraceHTTP(t *testing.T) {
	dir := filepath.Join(traceSemantics, "10-l7")
	base := []string{"--policies", dir, "--from-labels", "app=web", "--to-labels", "app=api", "--port", "8080/tcp"}
	j := traceJSONOf(t, append(base, "--http-method", "POST", "--http-path", "/submit", "--http-header", "X-Tenant=acme")...)
	if j.Verdict != "allowed" || j.Connection != "" || j.L7 == nil || !j.L7.Redirect || j.L7.HTTP == nil || j.L7.HTTP.Verdict != "allowed" {
		t.Errorf("POST /submit with X-Tenant=acme: %+v", j)
	}
	// A refused request is denied traffic, at the end whose http blocks
	// refused it, on a connection the policies allow (decision 72).
	refused := append(base, "--http-method", "POST", "--http-path", "/submit", "--http-header", "X-Tenant=evil")
	j = traceJSONOf(t, refused...)
	if j.Verdict != "denied" || j.Egress != "allowed" || j.Ingress != "denied" || j.Connection != "allowed" ||
		j.L7 == nil || j.L7.HTTP == nil || j.L7.HTTP.Verdict != "403" || len(j.Matched) != 2 {
		t.Errorf("POST /submit with X-Tenant=evil should be denied by the ingress's http blocks: %+v", j)
	}
	if out, _, code := traceCLI(t, refused...); code != 0 || !strings.HasPrefix(out, "verdict: denied (the connection is allowed; the proxy answers the request 403 Forbidden)\n") ||
		!strings.Contains(out, "\ningress: denied (endpoint app=api, default-deny on; the connection is allowed, the request is not)\n") {
		t.Errorf("text trace of a refused request (exit %d):\n%s", code, out)
	}
	// A repeated header is judged joined, as the proxies judge it.
	j = traceJSONOf(t, append(base, "--http-method", "POST", "--http-path", "/submit", "--http-header", "X-Tenant=evil", "--http-header", "X-Tenant=acme")...)
	if j.L7 == nil || j.L7.HTTP == nil || j.L7.HTTP.Verdict != "403" {
		t.Errorf("POST /submit with X-Tenant evil and acme should be refused: %+v", j)
	}
	// The path as the proxy judges it: /x/../submit is /submit.
	j = traceJSONOf(t, append(base, "--http-method", "POST", "--http-path", "/x/../submit", "--http-header", "X-Tenant=acme")...)
	if j.L7 == nil || j.L7.HTTP == nil || j.L7.HTTP.Verdict != "allowed" {
		t.Errorf("POST /x/../submit with X-Tenant=acme should be judged as /submit: %+v", j)
	}
	if out, _, code := traceCLI(t, append(base, "--http-method", "CONNECT", "--http-path", "/", "--http-host", "admin.example.com", "--http-header", "X-Token=1")...); code != 0 || !strings.Contains(out, "CONNECT is not proxied") {
		t.Errorf("CONNECT (exit %d) should be refused whatever the rules:\n%s", code, out)
	}
	out, _, code := traceCLI(t, append(base, "--http-method", "GET", "--http-path", "/nope", "--http-host", "x")...)
	if code != 0 || !strings.Contains(out, "403 Forbidden") {
		t.Errorf("text output for a refused request (exit %d):\n%s", code, out)
	}
}

func TestTraceICMPAndIPv6(t *testing.T) {
	dir := filepath.Join(traceSemantics, "05-ports-icmp")
	if j := traceJSONOf(t, "--policies", dir, "--from-ip", "192.0.2.1", "--to-labels", "app=srv", "--icmp", "echo-request"); j.Verdict != "allowed" {
		t.Errorf("ICMPv4 echo-request: %+v", j)
	}
	// An IPv6 end makes --icmp an ICMPv6 type: echo-request is 128 there.
	if j := traceJSONOf(t, "--policies", dir, "--from-ip", "2001:db8::1", "--to-labels", "app=srv", "--icmp", "echo-request"); j.Verdict != "allowed" {
		t.Errorf("ICMPv6 echo-request via --icmp: %+v", j)
	}
	if j := traceJSONOf(t, "--policies", dir, "--from-ip", "2001:db8::1", "--to-labels", "app=srv", "--icmpv6", "echo-reply"); j.Verdict != "denied" {
		t.Errorf("ICMPv6 echo-reply: %+v", j)
	}
	if j := traceJSONOf(t, "--policies", dir, "--from-ip", "192.0.2.1", "--to-labels", "app=srv", "--icmp", "0"); j.Verdict != "denied" {
		t.Errorf("ICMPv4 type 0: %+v", j)
	}
}

// An address copied from `ip addr` carries its link's zone (fe80::1%eth0);
// the packet does not, and the trace judges the address, so a CIDR deny
// rule holding it denies the connection.
func TestTraceZonedAddressIsJudgedWithoutItsZone(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, filepath.Join(dir, "p.hcl"), `policy "web" {
  selector = "app=web"
  ingress {}
  ingress_deny {
    from_cidr = ["fe80::/10"]
  }
}
`)
	j := traceJSONOf(t, "--policies", dir, "--from-ip", "fe80::1%eth0", "--to-labels", "app=web", "--port", "80/tcp")
	if j.Verdict != "denied" || len(j.Matched) != 1 || j.Matched[0].Block != "ingress_deny" {
		t.Errorf("from fe80::1%%eth0: %+v, want denied by the ingress_deny", j)
	}
}

// Only identity-relevant labels count for selection (policy-language.md,
// "Labels an endpoint carries"): container.name and the other volatile
// labels are no endpoint's in the daemon unless its config includes them,
// so a rule naming one does not match, and the offline trace (the default
// config) says so instead of judging by labels no endpoint has.
func TestTraceLabelsCountOnlyWhenIdentityRelevant(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, filepath.Join(dir, "p.hcl"), `policy "db" {
  selector = "app=db"
  ingress_deny {
    from_endpoints = ["container.name=evil"]
  }
  ingress_deny {
    from_endpoints = ["com.docker.compose.project=shop, compose.service=bad"]
  }
}
`)
	out, errOut, code := traceCLI(t, "--policies", dir, "--from-labels", "container.name=evil,app=x,com.docker.compose.config-hash=ab12",
		"--to-labels", "app=db", "--port", "5432/tcp")
	if code != 0 || !strings.Contains(out, "verdict: allowed") || !strings.Contains(out, "from:    endpoint app=x\n") {
		t.Errorf("a volatile label selected the peer: exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{`container.name`, `com.docker.compose.config-hash`, "identity"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr does not say that %s does not count:\n%s", want, errOut)
		}
	}
	// com.docker.compose.project itself counts (only .project.* is volatile).
	j := traceJSONOf(t, "--policies", dir, "--from-labels", "com.docker.compose.project=shop,compose.service=bad",
		"--to-labels", "app=db", "--port", "5432/tcp")
	if j.Verdict != "denied" {
		t.Errorf("identity labels: %+v, want denied", j)
	}
}

// An endpoint carries the derived labels of its runtime labels
// (compose.service from com.docker.compose.service, nomad.job from
// com.hashicorp.nomad.job_name, ...): labels copied from docker inspect are
// judged as the daemon judges that container.
func TestTraceLabelsGetTheDerivedLabels(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, filepath.Join(dir, "p.hcl"), `policy "web" {
  selector = "compose.project=shop, compose.service=web"
  ingress {
    from_endpoints = ["nomad.job=billing"]
  }
}
`)
	j := traceJSONOf(t, "--policies", dir, "--from-entity", "world",
		"--to-labels", "com.docker.compose.project=shop,com.docker.compose.service=web", "--port", "443/tcp")
	if j.Verdict != "denied" || j.Ingress != "denied" {
		t.Errorf("world to the Compose service: %+v, want denied by its default-deny", j)
	}
	j = traceJSONOf(t, "--policies", dir, "--from-labels", "com.hashicorp.nomad.job_name=billing",
		"--to-labels", "com.docker.compose.project=shop,com.docker.compose.service=web", "--port", "443/tcp")
	if j.Verdict != "allowed" || len(j.Matched) != 1 {
		t.Errorf("the Nomad job to the Compose service: %+v, want allowed by the ingress", j)
	}
}

func TestTraceInvalidPoliciesExitOneWithDiagnostics(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, filepath.Join(dir, "bad.hcl"), "policy \"x\" {\n  selector = \"app=web\"\n  ingres {}\n}\n")
	out, errOut, code := traceCLI(t, "--policies", dir, "--from-entity", "world", "--to-labels", "app=web")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (stdout %q, stderr %q)", code, out, errOut)
	}
	if !strings.Contains(errOut, filepath.Join(dir, "bad.hcl")+":3:3: error: ") {
		t.Errorf("diagnostics lack the position bad.hcl:3:\n%s", errOut)
	}
	out, _, code = traceCLI(t, "--policies", dir, "--from-entity", "world", "--to-labels", "app=web", "--format", "json")
	var diags []map[string]any
	if code != 1 || json.Unmarshal([]byte(out), &diags) != nil || len(diags) == 0 {
		t.Errorf("json: exit %d, want 1 and a diagnostics array, got %q", code, out)
	}
}

func TestTraceUsageErrorsExitTwo(t *testing.T) {
	pol := filepath.Join(traceSemantics, "09-both-ends")
	ends := []string{"--from-labels", "app=a", "--to-labels", "app=b"}
	for name, args := range map[string][]string{
		"two from flags":       {"--policies", pol, "--from-labels", "app=a", "--from-entity", "host", "--to-labels", "app=b"},
		"no from flag":         {"--policies", pol, "--to-labels", "app=b"},
		"no to flag":           {"--policies", pol, "--from-labels", "app=b"},
		"port without proto":   append([]string{"--policies", pol, "--port", "80"}, ends...),
		"port zero":            append([]string{"--policies", pol, "--port", "0/tcp"}, ends...),
		"port too big":         append([]string{"--policies", pol, "--port", "65536/tcp"}, ends...),
		"port bad proto":       append([]string{"--policies", pol, "--port", "80/icmp"}, ends...),
		"port not a number":    append([]string{"--policies", pol, "--port", "http/tcp"}, ends...),
		"port and icmp":        append([]string{"--policies", pol, "--port", "80/tcp", "--icmp", "8"}, ends...),
		"bad icmp":             append([]string{"--policies", pol, "--icmp", "ping"}, ends...),
		"http without port":    append([]string{"--policies", pol, "--http-method", "GET", "--http-path", "/"}, ends...),
		"http over udp":        append([]string{"--policies", pol, "--port", "80/udp", "--http-method", "GET", "--http-path", "/"}, ends...),
		"http without path":    append([]string{"--policies", pol, "--port", "80/tcp", "--http-method", "GET"}, ends...),
		"bad header":           append([]string{"--policies", pol, "--port", "80/tcp", "--http-method", "GET", "--http-path", "/", "--http-header", "X"}, ends...),
		"entity cluster":       {"--policies", pol, "--from-entity", "cluster", "--to-labels", "app=b"},
		"unknown entity":       {"--policies", pol, "--from-entity", "moon", "--to-labels", "app=b"},
		"bad ip":               {"--policies", pol, "--from-ip", "10.0.0.300", "--to-labels", "app=b"},
		"bad labels":           {"--policies", pol, "--from-labels", "a b c", "--to-labels", "app=b"},
		"no policies":          ends,
		"missing policies":     append([]string{"--policies", filepath.Join(t.TempDir(), "nope")}, ends...),
		"bad format":           append([]string{"--policies", pol, "--format", "yaml"}, ends...),
		"container offline":    {"--policies", pol, "--from-container", "web", "--to-labels", "app=b"},
		"positional argument":  append([]string{"--policies", pol, "extra"}, ends...),
		"unknown flag":         append([]string{"--policies", pol, "--to-port", "80"}, ends...),
		"live with --policies": append([]string{"--live", "--policies", pol}, ends...),
		"two address families": {"--policies", pol, "--from-ip", "fe80::1", "--to-ip", "10.0.0.1", "--port", "80/tcp"},
		"mapped and IPv6":      {"--policies", pol, "--from-ip", "::ffff:10.0.0.1", "--to-ip", "2001:db8::1"},
		"icmpv6 from IPv4":     {"--policies", pol, "--from-ip", "10.0.0.1", "--to-labels", "app=b", "--icmpv6", "echo-request"},
	} {
		t.Run(name, func(t *testing.T) {
			out, errOut, code := traceCLI(t, args...)
			if code != 2 {
				t.Errorf("exit %d, want 2 (stdout %q, stderr %q)", code, out, errOut)
			}
			if strings.TrimSpace(errOut) == "" {
				t.Errorf("a usage error must say what is wrong")
			}
		})
	}
}

func TestTraceLive(t *testing.T) {
	saved := liveTrace
	t.Cleanup(func() { liveTrace = saved })

	liveTrace = nil
	_, errOut, code := traceCLI(t, "--live", "--from-container", "web", "--to-entity", "world", "--port", "443/tcp")
	if code != 1 || !strings.Contains(errOut, "--live needs a running membraned") {
		t.Errorf("without a daemon client: exit %d, %q", code, errOut)
	}

	var got traceQuery
	liveTrace = func(_ *cobra.Command, q traceQuery) (policies.Result, error) {
		got = q
		return policies.Result{Verdict: policies.VerdictDenied, From: "endpoint web", To: "world",
			Egress:  policies.EndResult{Verdict: policies.VerdictDenied, DefaultDeny: true},
			Ingress: policies.EndResult{Verdict: policies.VerdictNotApplicable}}, nil
	}
	out, errOut, code := traceCLI(t, "--live", "--from-container", "web", "--to-entity", "world", "--port", "443/tcp", "--format", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if got.FromContainer != "web" || got.ToEntity != "world" || got.Proto != "tcp" || got.Port != 443 {
		t.Errorf("liveTrace got %+v", got)
	}
	var j traceJSON
	if err := json.Unmarshal([]byte(out), &j); err != nil || j.Verdict != "denied" || j.Egress != "denied" || j.Ingress != "not-applicable" {
		t.Errorf("live json output %q (%v)", out, err)
	}
}

// --icmp and --icmpv6 take the policy language's names (one table, in
// policies.ParseICMPType); a name of the other family says which flag takes it.
func TestTraceICMPTypeNames(t *testing.T) {
	pol := filepath.Join(traceSemantics, "05-ports-icmp")
	ends := []string{"--from-ip", "192.0.2.1", "--to-labels", "app=srv"}
	for _, name := range []string{"echo-request", "Echo-Request", "8"} {
		if _, errOut, code := traceCLI(t, append([]string{"--policies", pol, "--icmp", name}, ends...)...); code != 0 {
			t.Errorf("--icmp %s: exit %d (%s)", name, code, errOut)
		}
	}
	for _, tc := range []struct{ flag, value, want string }{
		{"--icmp", "packet-too-big", "use --icmpv6"},
		{"--icmpv6", "redirect", "use --icmp"},
		{"--icmpv6", "echo-reqest", `did you mean "echo-request"`},
		{"--icmp", "256", "out of range 0-255"},
	} {
		_, errOut, code := traceCLI(t, append([]string{"--policies", pol, tc.flag, tc.value}, ends...)...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%s %s: exit %d, stderr %q; want exit 2 and %q", tc.flag, tc.value, code, errOut, tc.want)
		}
	}
}

// --from-labels "" names an endpoint without labels (a container run
// without any), which selector "" selects; it is not a missing end. An
// empty entity, address or container is a usage error that says so.
func TestTraceEndpointWithoutLabels(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "all.hcl")
	if err := os.WriteFile(pol, []byte("policy \"all\" {\n  selector = \"\"\n  egress {\n    to_entities = [\"host\"]\n  }\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for to, want := range map[string]string{"host": "verdict: allowed", "world": "verdict: denied"} {
		out, errOut, code := traceCLI(t, "--policies", pol, "--from-labels", "", "--to-entity", to)
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("to %s: exit %d, want 0 and %q:\n%s%s", to, code, want, out, errOut)
		}
	}
	for flag, want := range map[string]string{"--from-entity": "want host, world or init", "--from-ip": "is not an IP address", "--from-container": "want a container name or ID"} {
		_, errOut, code := traceCLI(t, "--policies", pol, flag, "", "--to-entity", "host")
		if code != 2 || !strings.Contains(errOut, want) {
			t.Errorf("%s \"\": exit %d, want 2 and %q: %s", flag, code, want, errOut)
		}
	}
}

// The Host field given as --http-header Host=H is the request's host, as
// it is on the wire, and judged by host rules as --http-host H is; given
// both ways it would be two Host fields (400 from the proxy), a usage
// error.
func TestTraceHostGivenAsAHeader(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "p.hcl")
	writePolicy(t, pol, "policy \"a\" {\n  selector = \"app=x\"\n  ingress {\n    ports = [\"80/tcp\"]\n    http {\n      host = \"svc\"\n    }\n  }\n}\n")
	base := []string{"--policies", pol, "--from-ip", "192.0.2.1", "--to-labels", "app=x", "--port", "80/tcp", "--http-method", "GET", "--http-path", "/"}
	for _, h := range []string{"Host=svc", "host=svc"} {
		if j := traceJSONOf(t, append(base, "--http-header", h)...); j.L7 == nil || j.L7.HTTP == nil || j.L7.HTTP.Verdict != "allowed" {
			t.Errorf("--http-header %s: %+v, want allowed by the host rule", h, j.L7)
		}
	}
	if _, errOut, code := traceCLI(t, append(base, "--http-host", "svc", "--http-header", "Host=evil")...); code != 2 || !strings.Contains(errOut, "Host") {
		t.Errorf("--http-host and --http-header Host: exit %d, want 2: %s", code, errOut)
	}
}

// A --policies directory without policy files (its policies in a
// subdirectory, which is not read) traces an empty set, which allows
// everything: the trace says so on standard error, and is still exit 0.
func TestTraceOfNoPolicyFileSaysSo(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, filepath.Join(dir, "sub", "p.hcl"), "policy \"a\" {\n  selector = \"app=x\"\n  ingress {\n  }\n}\n")
	out, errOut, code := traceCLI(t, "--policies", dir, "--from-entity", "host", "--to-labels", "app=x", "--port", "80/tcp")
	if code != 0 || !strings.Contains(out, "verdict: allowed") || !strings.Contains(errOut, "no policy file") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, errOut, _ := traceCLI(t, "--policies", filepath.Join(dir, "sub"), "--from-entity", "host", "--to-labels", "app=x", "--port", "80/tcp"); strings.Contains(errOut, "no policy file") {
		t.Errorf("a directory with a policy file: %s", errOut)
	}
}

// A field value's leading and trailing blanks are not part of it (RFC 9110,
// section 5.5): the proxies read "X-Tenant:  acme " as acme, and so does
// policy trace with --http-header "X-Tenant= acme ", each value of a
// repeated field on its own.
func TestTraceHTTPHeaderValueWithoutBlanks(t *testing.T) {
	bin := buildMembrane(t)
	base := []string{"policy", "trace", "--policies", filepath.Join(traceSemantics, "10-l7"), "--from-labels", "app=web", "--to-labels", "app=api",
		"--port", "8080/tcp", "--http-method", "POST", "--http-path", "/submit", "--format", "json"}
	for _, tc := range []struct {
		headers []string
		want    string
	}{
		{[]string{"X-Tenant= acme\t "}, "allowed"},
		{[]string{"X-Tenant=acme "}, "allowed"},
		{[]string{"X-Tenant=evil "}, "403"},
		{[]string{"X-Tenant=acme ", "X-Tenant= acme"}, "403"}, // acme,acme
	} {
		args := append([]string(nil), base...)
		for _, h := range tc.headers {
			args = append(args, "--http-header", h)
		}
		stdout, stderr, code := runBinary(t, bin, args...)
		var j traceJSON
		if code != 0 || json.Unmarshal([]byte(stdout), &j) != nil {
			t.Fatalf("%q: exit %d, stdout %q, stderr %q", tc.headers, code, stdout, stderr)
		}
		if j.L7 == nil || j.L7.HTTP == nil || j.L7.HTTP.Verdict != tc.want {
			t.Errorf("%q: stdout %s, want the request %s", tc.headers, stdout, tc.want)
		}
	}
}

// Offline, every --from-ip/--to-ip is the world (the trace knows no
// daemon), but an address of the host it runs on is the host to membraned,
// whose CIDR rules never match it: the trace says so on standard error, so
// that an "allowed" for to_cidr = ["172.17.0.1/32"] is not taken at its
// word. Its JSON output stays the one object.
func TestTraceNotesAHostAddress(t *testing.T) {
	testenv.RequireRoot(t)
	bin := buildMembrane(t)
	ns := testenv.NewNetNS(t, "mttr-")
	ns.MustExec(t, "ip", "link", "add", "br-mttrace", "type", "bridge")
	ns.MustExec(t, "ip", "addr", "add", "172.31.252.1/24", "dev", "br-mttrace")
	dir := t.TempDir()
	writePolicy(t, filepath.Join(dir, "p.hcl"), `policy "x" {
  selector = "app=x"
  egress {
    to_cidr = ["172.31.252.0/24"]
  }
}
`)
	for _, tc := range []struct {
		args []string
		note string
	}{
		{[]string{"--from-labels", "app=x", "--to-ip", "172.31.252.1"}, "--to-ip 172.31.252.1 is an address of this host (br-mttrace)"},
		{[]string{"--from-ip", "172.31.252.1", "--to-labels", "app=x"}, "--from-ip 172.31.252.1 is an address of this host (br-mttrace)"},
		{[]string{"--from-labels", "app=x", "--to-ip", "172.31.252.2"}, ""},
	} {
		var stdout, stderr bytes.Buffer
		cmd := ns.Command(bin, append(append([]string{"policy", "trace", "--policies", dir, "--format", "json"}, tc.args...), "--port", "80/tcp")...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%q: %v: %s%s", tc.args, err, stdout.String(), stderr.String())
		}
		var j traceJSON
		if err := json.Unmarshal(stdout.Bytes(), &j); err != nil {
			t.Errorf("%q: stdout is not one JSON object: %v\n%s", tc.args, err, stdout.String())
		}
		if tc.note == "" && stderr.Len() > 0 || tc.note != "" && !strings.Contains(stderr.String(), tc.note) {
			t.Errorf("%q: stderr %q, want the note %q", tc.args, stderr.String(), tc.note)
		}
	}
}

// A misspelt --from-entity/--to-entity gets the "did you mean" that a
// misspelt entity in a policy file gets (decision 73), among the entities
// that name one peer.
func TestTraceUnknownEntitySuggests(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "p.hcl")
	writePolicy(t, pol, "policy \"b\" {\n  selector = \"app=b\"\n}\n")
	for _, tc := range []struct{ flag, entity, want string }{
		{"--from-entity", "hots", `--from-entity "hots": want host, world or init; did you mean "host"?`},
		{"--from-entity", "Host", `did you mean "host"?`},
		{"--to-entity", "wrold", `--to-entity "wrold": want host, world or init; did you mean "world"?`},
		{"--from-entity", "moon", `--from-entity "moon": want host, world or init`},
	} {
		args := []string{"--policies", pol, tc.flag, tc.entity}
		if tc.flag == "--from-entity" {
			args = append(args, "--to-labels", "app=b")
		} else {
			args = append(args, "--from-labels", "app=b")
		}
		out, errOut, code := traceCLI(t, args...)
		if code != 2 || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("%s %s: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.flag, tc.entity, code, out, errOut, tc.want)
		}
		if tc.entity == "moon" && strings.Contains(errOut, "did you mean") {
			t.Errorf("%s moon: suggested something: %q", tc.flag, errOut)
		}
	}
}

// A request the proxies refuse whatever the rules (a target byte that is
// not visible ASCII, decision 80; a method or header name that is no
// token; a line break in a value) is traced as they answer it, 400 before
// the rules, and the answer names what is wrong.
func TestTraceNamesWhatTheProxyRefuses(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "p.hcl")
	writePolicy(t, pol, "policy \"b\" {\n  selector = \"app=b\"\n  ingress {\n    ports = [\"80/tcp\"]\n    http {}\n  }\n}\n")
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--http-method", "GET", "--http-path", "/a b"}, "byte 0x20 is not visible ASCII (clients send it percent-encoded, as %20)"},
		{[]string{"--http-method", "GE T", "--http-path", "/"}, `invalid method: "GE T" is not a token`},
		{[]string{"--http-method", "GET", "--http-path", "/", "--http-header", "bad header=1"}, `the name "bad header" is not a token`},
		{[]string{"--http-method", "GET", "--http-path", "/", "--http-header", "X-A=a\nb"}, "the value of X-A holds a line break or NUL"},
	} {
		args := append([]string{"--policies", pol, "--from-entity", "host", "--to-labels", "app=b", "--port", "80/tcp"}, tc.flags...)
		out, errOut, code := traceCLI(t, args...)
		if code != 0 || !strings.Contains(out, "verdict: denied") || !strings.Contains(out, "400 before the rules") || !strings.Contains(out, tc.want) {
			t.Errorf("trace %q: exit %d, stdout %q, stderr %q; want the proxy's 400 with %q", tc.flags, code, out, errOut, tc.want)
		}
	}
}
