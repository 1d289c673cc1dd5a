package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/policies"
)

type cliBackend struct {
	reconciled bool
	hub        *api.FlowHub
	policyErr  *api.PolicyError
}

func (b *cliBackend) Status() api.Status {
	return api.Status{Up: true, Reconciled: b.reconciled, Endpoints: 1, Identities: 6, Policies: 2, PolicyRevision: 3, Errors: []string{}, LastPolicyError: b.policyErr}
}
func (b *cliBackend) Endpoints() []api.Endpoint {
	return []api.Endpoint{{ID: 1, Identity: 300, Labels: map[string]string{"app": "web"}, Addresses: []string{"172.17.0.5"}, Containers: []api.Container{{ID: "c1", Name: "web-1"}}, Policies: []string{"web"}}}
}
func (b *cliBackend) Endpoint(ref string) (api.Endpoint, bool) {
	if ref == "web-1" {
		return b.Endpoints()[0], true
	}
	return api.Endpoint{}, false
}
func (b *cliBackend) Identities() []api.Identity {
	return []api.Identity{{ID: 1, Reserved: "host"}, {ID: 300, Labels: map[string]string{"app": "web"}, Endpoints: 1}}
}
func (b *cliBackend) Policy() api.Policy {
	return api.Policy{Revision: 3, LastPolicyError: b.policyErr}
}
func (b *cliBackend) Trace(_ context.Context, req api.TraceRequest) (api.TraceResult, error) {
	if req.FromContainer != "web-1" || req.Port != 5432 || req.Proto != "tcp" {
		return api.TraceResult{}, &api.BadRequestError{Err: fmt.Errorf("unexpected request %+v", req)}
	}
	res := policies.Result{Verdict: policies.VerdictDenied, From: "endpoint app=web", To: "endpoint app=db",
		Egress:  policies.EndResult{Verdict: policies.VerdictAllowed},
		Ingress: policies.EndResult{Verdict: policies.VerdictDenied, DefaultDeny: true}}
	raw, err := json.Marshal(res)
	return api.TraceResult{Result: raw}, err
}
func (b *cliBackend) Flows(ctx context.Context, follow bool) ([]api.Flow, <-chan api.Flow) {
	return b.hub.Flows(ctx, follow)
}
func (b *cliBackend) ReloadPolicies(context.Context) error { return nil }
func (b *cliBackend) Resync(context.Context) error         { return nil }

func serve(t *testing.T, b *cliBackend) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	srv, err := api.NewServer(api.Options{Socket: sock}, b)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock
}

// run executes the CLI and returns stdout and the exit code main would use.
func run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	code := exitCode(err)
	if err != nil {
		out.WriteString("ERR: " + err.Error())
	}
	return out.String(), code
}

func TestStatusExitCodeFollowsReconcile(t *testing.T) {
	b := &cliBackend{hub: api.NewFlowHub(10)}
	sock := serve(t, b)
	if out, code := run(t, "status", "--socket", sock); code != 1 || !strings.Contains(out, "first reconcile not finished") {
		t.Fatalf("not reconciled: code %d, out %s", code, out)
	}
	b.reconciled = true
	out, code := run(t, "status", "--socket", sock, "-o", "json")
	if code != 0 {
		t.Fatalf("reconciled: code %d, out %s", code, out)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status json: %v: %s", err, out)
	}
	for _, k := range []string{"endpoints", "identities", "policies", "policy_revision", "last_policy_error"} {
		if _, ok := st[k]; !ok {
			t.Errorf("status json lacks %q", k)
		}
	}
	if st["last_policy_error"] != nil {
		t.Errorf("last_policy_error = %v, want null", st["last_policy_error"])
	}
}

// A rejected set's diagnostics print as `membrane policy check` prints
// them: FILE:LINE:COL for a position in a file, FILE alone for a file that
// could not be read at all (never a made-up FILE:0:0).
func TestStatusPrintsRejectedSetPositionsLikePolicyCheck(t *testing.T) {
	b := &cliBackend{reconciled: true, hub: api.NewFlowHub(10), policyErr: &api.PolicyError{
		Message: "policy set rejected; the last good set stays enforced",
		Diagnostics: []api.Diagnostic{
			{File: "/p/a.hcl", Line: 3, Column: 5, Severity: "error", Summary: `Unsupported block type "ingres"`},
			{File: "/p/b.hcl", Severity: "error", Summary: "Cannot read policy file: it links to /srv/b.hcl: no such file or directory"},
		},
	}}
	sock := serve(t, b)
	for _, args := range [][]string{{"status"}, {"policy", "show"}} {
		out, _ := run(t, append(args, "--socket", sock)...)
		for _, want := range []string{
			"  /p/a.hcl:3:5: error: Unsupported block type \"ingres\"\n",
			"  /p/b.hcl: error: Cannot read policy file: it links to /srv/b.hcl: no such file or directory\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("membrane %s lacks %q:\n%s", strings.Join(args, " "), want, out)
			}
		}
		if strings.Contains(out, ":0:0") {
			t.Errorf("membrane %s prints a position 0:0:\n%s", strings.Join(args, " "), out)
		}
	}
}

func TestStatusWithoutDaemonFails(t *testing.T) {
	out, code := run(t, "status", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if code != 1 || !strings.Contains(out, "not running") {
		t.Fatalf("code %d out %s", code, out)
	}
}

func TestSocketFromEnvironment(t *testing.T) {
	b := &cliBackend{reconciled: true, hub: api.NewFlowHub(10)}
	t.Setenv("MEMBRANE_SOCKET", serve(t, b))
	if _, code := run(t, "status"); code != 0 {
		t.Fatalf("MEMBRANE_SOCKET not used (code %d)", code)
	}
}

func TestEndpointListJSONAndGet(t *testing.T) {
	sock := serve(t, &cliBackend{hub: api.NewFlowHub(10)})
	out, code := run(t, "endpoint", "list", "--socket", sock, "-o", "json")
	if code != 0 {
		t.Fatal(out)
	}
	var eps []map[string]any
	if err := json.Unmarshal([]byte(out), &eps); err != nil || len(eps) != 1 {
		t.Fatalf("%v %s", err, out)
	}
	for _, k := range []string{"id", "identity", "labels", "addresses", "containers"} {
		if _, ok := eps[0][k]; !ok {
			t.Errorf("endpoint json lacks %q", k)
		}
	}
	out, code = run(t, "endpoint", "get", "web-1", "--socket", sock)
	if code != 0 || !strings.Contains(out, "app=web") || !strings.Contains(out, "172.17.0.5") {
		t.Fatalf("get: %d %s", code, out)
	}
	if out, code := run(t, "endpoint", "get", "nope", "--socket", sock); code != 1 || !strings.Contains(out, "no endpoint") {
		t.Fatalf("get missing: %d %s", code, out)
	}
	if _, code := run(t, "endpoint", "list", "-o", "yaml", "--socket", sock); code != 2 {
		t.Fatalf("bad -o: exit %d, want 2", code)
	}
}

func TestObserveFiltersAndPrintsRule(t *testing.T) {
	b := &cliBackend{hub: api.NewFlowHub(10)}
	sock := serve(t, b)
	b.hub.Publish(api.Flow{Time: time.Now(), Verdict: "dropped", Reason: "policy-deny", Direction: "egress", Protocol: "tcp",
		Source: api.Peer{IP: "172.17.0.5", Port: 40000, Identity: 300, Container: "web-1"}, Dest: api.Peer{IP: "172.17.0.6", Port: 5432, Identity: 301},
		Rule: &api.RuleRef{ID: 2, Policy: "db", Block: "egress_deny", File: "db.hcl", Line: 7}})
	b.hub.Publish(api.Flow{Time: time.Now(), Verdict: "allowed", Reason: "allow-policy"})
	out, code := run(t, "observe", "--verdict", "dropped", "--socket", sock)
	if code != 0 || strings.Count(out, "\n") != 1 || !strings.Contains(out, `policy "db" egress_deny (db.hcl:7)`) || !strings.Contains(out, "web-1") {
		t.Fatalf("observe: %d %q", code, out)
	}
	out, _ = run(t, "observe", "--verdict", "dropped", "-o", "json", "--socket", sock)
	var f api.Flow
	if err := json.Unmarshal([]byte(out), &f); err != nil || f.Rule == nil || f.Rule.Policy != "db" {
		t.Fatalf("observe json: %v %s", err, out)
	}
	if _, code := run(t, "observe", "--verdict", "maybe", "--socket", sock); code != 2 {
		t.Fatalf("bad verdict exit %d, want 2", code)
	}
	// A negative count is the command's mistake, found before it asks
	// membraned (which would refuse it: exit 1, as for a daemon problem).
	if out, code := run(t, "observe", "--last", "-1", "--socket", filepath.Join(t.TempDir(), "none.sock")); code != 2 || !strings.Contains(out, "--last -1") {
		t.Fatalf("--last -1: exit %d, want 2: %s", code, out)
	}
	// So is a verdict that no record of the --type asked for carries.
	for _, args := range [][]string{{"--type", "l3", "--verdict", "denied"}, {"--type", "l7", "--verdict", "dropped"}} {
		if out, code := run(t, append([]string{"observe", "--socket", filepath.Join(t.TempDir(), "none.sock")}, args...)...); code != 2 || !strings.Contains(out, "never goes with --type") {
			t.Fatalf("%v: exit %d, want 2: %s", args, code, out)
		}
	}
	if _, code := run(t, "observe", "--type", "l7", "--verdict", "denied", "--socket", sock); code != 0 {
		t.Fatalf("--type l7 --verdict denied: exit %d, want 0", code)
	}
}

func TestObserveTypeL7(t *testing.T) {
	b := &cliBackend{hub: api.NewFlowHub(10)}
	sock := serve(t, b)
	b.hub.Publish(api.Flow{Time: time.Now(), Type: api.FlowL3, Verdict: "dropped", Reason: "policy-deny", Protocol: "tcp"})
	b.hub.Publish(api.Flow{Time: time.Now(), Type: api.FlowL7, Verdict: "denied", Reason: "l7-denied", Protocol: "tcp", Direction: "egress",
		Source: api.Peer{IP: "172.17.0.5", Port: 40000, Identity: 300, Container: "web-1"}, Dest: api.Peer{IP: "172.17.0.6", Port: 80, Identity: 301, Container: "api-1"},
		Rule: &api.RuleRef{Policy: "api", File: "api.hcl", Line: 1},
		HTTP: &api.HTTPInfo{Engine: "builtin", Proto: "HTTP/1.1", Method: "POST", Path: "/admin", Host: "api", Status: 403, Policy: "api"}})
	b.hub.Publish(api.Flow{Time: time.Now(), Type: api.FlowL7, Verdict: "forwarded", Reason: "l7-forwarded", Protocol: "tcp", Direction: "ingress",
		Rule: &api.RuleRef{ID: 3, Policy: "api", Block: "ingress", File: "api.hcl", Line: 4},
		HTTP: &api.HTTPInfo{Engine: "builtin", Proto: "HTTP/1.1", Method: "GET", Path: "/ok", Host: "api", Status: 200, Policy: "api"}})
	out, code := run(t, "observe", "--type", "l7", "--socket", sock)
	if code != 0 || strings.Count(out, "\n") != 2 || strings.Contains(out, "policy-deny") {
		t.Fatalf("observe --type l7: %d %q", code, out)
	}
	for _, want := range []string{"denied", "403", "l7 egress", "POST api /admin", `policy "api" (api.hcl:1)`, "web-1", "api-1", "forwarded", "200", "l7 ingress", "GET api /ok", `policy "api" ingress (api.hcl:4)`} {
		if !strings.Contains(out, want) {
			t.Errorf("observe --type l7 lacks %q:\n%s", want, out)
		}
	}
	out, _ = run(t, "observe", "--type", "l3", "--socket", sock)
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "policy-deny") {
		t.Errorf("observe --type l3: %q", out)
	}
	out, _ = run(t, "observe", "--socket", sock)
	if strings.Count(out, "\n") != 3 {
		t.Errorf("observe (all): %q", out)
	}
	out, _ = run(t, "observe", "--type", "l7", "--verdict", "denied", "-o", "json", "--socket", sock)
	var f api.Flow
	if err := json.Unmarshal([]byte(out), &f); err != nil || f.Type != "l7" || f.HTTP == nil || f.HTTP.Method != "POST" || f.HTTP.Status != 403 || f.HTTP.Policy != "api" {
		t.Fatalf("observe l7 json: %v %s", err, out)
	}
	if _, code := run(t, "observe", "--type", "l4", "--socket", sock); code != 2 {
		t.Fatalf("bad type exit %d, want 2", code)
	}
	out, _ = run(t, "observe", "--direction", "ingress", "--socket", sock)
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "GET api /ok") {
		t.Errorf("observe --direction ingress: %q", out)
	}
	if _, code := run(t, "observe", "--direction", "up", "--socket", sock); code != 2 {
		t.Fatalf("bad direction exit %d, want 2", code)
	}
}

func TestPolicyTraceLiveAsksTheDaemon(t *testing.T) {
	sock := serve(t, &cliBackend{hub: api.NewFlowHub(10)})
	out, code := run(t, "policy", "trace", "--live", "--socket", sock, "--from-container", "web-1", "--to-container", "db", "--port", "5432/tcp", "--format", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	var j struct{ Verdict, Egress, Ingress string }
	if err := json.Unmarshal([]byte(out), &j); err != nil || j.Verdict != "denied" || j.Ingress != "denied" || j.Egress != "allowed" {
		t.Fatalf("live trace output %q (%v)", out, err)
	}
}

// Every command that reads or changes the daemon offers -o json with the
// answer as the API gives it (policy reload too: a script that reloads
// wants the revision it made), and each prints valid JSON.
func TestEveryDaemonCommandPrintsValidJSON(t *testing.T) {
	b := &cliBackend{reconciled: true, hub: api.NewFlowHub(10)}
	b.hub.Publish(api.Flow{Verdict: "dropped", Type: api.FlowL3})
	sock := serve(t, b)
	for _, args := range [][]string{
		{"status"}, {"endpoint", "list"}, {"endpoint", "get", "web-1"}, {"identity", "list"},
		{"policy", "show"}, {"policy", "reload"}, {"observe"},
	} {
		out, code := run(t, append(args, "--socket", sock, "-o", "json")...)
		if code != 0 {
			t.Errorf("membrane %s -o json: exit %d: %s", strings.Join(args, " "), code, out)
			continue
		}
		lines := []string{out}
		if args[0] == "observe" {
			lines = strings.Split(strings.TrimSpace(out), "\n") // NDJSON
		}
		for _, l := range lines {
			if !json.Valid([]byte(l)) {
				t.Errorf("membrane %s -o json: not JSON: %q", strings.Join(args, " "), l)
			}
		}
	}
	out, code := run(t, "policy", "reload", "--socket", sock, "-o", "json")
	var p api.Policy
	if code != 0 || json.Unmarshal([]byte(out), &p) != nil || p.Revision != 3 {
		t.Errorf("policy reload -o json: exit %d, %q; want the policy set at revision 3", code, out)
	}
}

// `endpoint get` with what no endpoint id, container name or id can be
// ("", ".", "..", a dot segment) is a usage error, not the API's "no API
// route" for the path it would make.
func TestEndpointGetRefusesWhatNamesNoEndpoint(t *testing.T) {
	sock := serve(t, &cliBackend{hub: api.NewFlowHub(10)})
	for _, ref := range []string{"", ".", "..", "../status", "a/./b"} {
		out, code := run(t, "endpoint", "get", ref, "--socket", sock)
		if code != 2 || !strings.Contains(out, "is not an endpoint id, container name or container id") || strings.Contains(out, "API route") {
			t.Errorf("endpoint get %q: exit %d, %q", ref, code, out)
		}
	}
}
