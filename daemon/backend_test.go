package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy/envoy"
	"github.com/membrane-fw/membrane/runtime/endpoint"
)

// The live trace judges labels given by flag as the daemon judges an
// endpoint's: only the identity-relevant ones count, under the daemon's
// own label filter.
func TestLiveTraceLabelsCountOnlyWhenIdentityRelevant(t *testing.T) {
	set, rep := policies.Parse(policies.Source{Name: "p.hcl", Bytes: []byte(`policy "db" {
  selector = "app=db"
  ingress_deny {
    from_endpoints = ["container.name=evil"]
  }
}
`)})
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	req := api.TraceRequest{FromLabels: map[string]string{"app": "x", "container.name": "evil"},
		ToLabels: map[string]string{"app": "db"}, Proto: "tcp", Port: 5432}
	for _, tc := range []struct {
		name   string
		filter endpoint.LabelFilter
		want   policies.Verdict
	}{
		{"default filter", endpoint.LabelFilter{}, policies.VerdictAllowed},
		{"container.name included", endpoint.LabelFilter{Include: []*regexp.Regexp{regexp.MustCompile(`^container\.name$`)}}, policies.VerdictDenied},
	} {
		r := &reconciler{filter: tc.filter}
		r.view.set(&view{set: set})
		tr, err := (&backend{r: r}).Trace(context.Background(), req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var res struct{ Verdict policies.Verdict }
		if err := json.Unmarshal(tr.Result, &res); err != nil {
			t.Fatal(err)
		}
		if res.Verdict != tc.want {
			t.Errorf("%s: verdict %s, want %s", tc.name, res.Verdict, tc.want)
		}
	}
}

// The live trace derives labels as the daemon derives an endpoint's:
// compose.service from com.docker.compose.service.
func TestLiveTraceLabelsGetTheDerivedLabels(t *testing.T) {
	set, rep := policies.Parse(policies.Source{Name: "p.hcl", Bytes: []byte(`policy "web" {
  selector = "compose.service=web"
  ingress {
    from_entities = ["host"]
  }
}
`)})
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	r := &reconciler{}
	r.view.set(&view{set: set})
	tr, err := (&backend{r: r}).Trace(context.Background(), api.TraceRequest{FromEntity: "world",
		ToLabels: map[string]string{"com.docker.compose.service": "web"}, Proto: "tcp", Port: 443})
	if err != nil {
		t.Fatal(err)
	}
	var res struct{ Verdict policies.Verdict }
	if err := json.Unmarshal(tr.Result, &res); err != nil {
		t.Fatal(err)
	}
	if res.Verdict != policies.VerdictDenied {
		t.Errorf("verdict %s, want denied: the policy selects the Compose service", res.Verdict)
	}
}

// An endpoint without labels (a container run without any has one) can be
// traced live: `membrane policy trace --live --from-labels ""` sends an
// empty label set, which must reach the daemon as labels, not as no end.
func TestLiveTraceEndpointWithoutLabels(t *testing.T) {
	set, rep := policies.Parse(policies.Source{Name: "p.hcl", Bytes: []byte(`policy "all" {
  selector = ""
  egress {
    to_entities = ["host"]
  }
}
`)})
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	r := &reconciler{}
	r.view.set(&view{set: set})
	sock := serveAPI(t, r)
	for _, tc := range []struct {
		to   string
		want policies.Verdict
	}{{"host", policies.VerdictAllowed}, {"world", policies.VerdictDenied}} {
		tr, err := api.NewClient(sock).Trace(context.Background(), api.TraceRequest{FromLabels: map[string]string{}, ToEntity: tc.to})
		if err != nil {
			t.Fatalf("to %s: %v", tc.to, err)
		}
		var res struct{ Verdict policies.Verdict }
		if err := json.Unmarshal(tr.Result, &res); err != nil {
			t.Fatal(err)
		}
		if res.Verdict != tc.want {
			t.Errorf("to %s: verdict %s, want %s (selector \"\" selects the endpoint)", tc.to, res.Verdict, tc.want)
		}
	}
}

// `membrane observe --container` takes a container's name or ID (the help
// says so, and `docker ps` shows IDs): the records name their containers,
// so an ID, a unique prefix of one or the endpoint's number selects the
// records of that container's endpoint, whatever name they carry.
func TestObserveContainerByID(t *testing.T) {
	r := &reconciler{flows: api.NewFlowHub(10)}
	web := api.Endpoint{ID: 7, Containers: []api.Container{{ID: "4f1c2a9e8b7d6c5a", Name: "web"}}}
	r.view.set(&view{endpoints: []api.Endpoint{web}})
	sock := serveAPI(t, r)
	// As flowOf makes them: an end that is an endpoint keeps its number
	// and containers.
	src := api.Peer{IP: "172.17.0.2"}
	setEndpoint(&src, &web)
	r.flows.Publish(api.Flow{Verdict: "dropped", Source: src, Dest: api.Peer{IP: "172.17.0.3"}})
	r.flows.Publish(api.Flow{Verdict: "dropped", Source: api.Peer{IP: "172.17.0.4", Container: "db"}, Dest: api.Peer{IP: "172.17.0.5"}})
	for _, ref := range []string{"web", "/web", "4f1c2a9e8b7d6c5a", "4f1c2a", "7"} {
		var got []string
		err := api.NewClient(sock).Observe(context.Background(), api.ObserveFilter{Container: ref}, func(f api.Flow) error {
			got = append(got, f.Source.Container)
			return nil
		})
		if err != nil || len(got) != 1 || got[0] != "web" {
			t.Errorf("--container %s: records of %v (err %v), want web's one", ref, got, err)
		}
	}
}

// A live trace request that names no connection there can be (an HTTP
// request over UDP, a port with ICMP, no port with TCP) is refused as a
// bad request, as the CLI refuses the flags, not judged.
func TestLiveTraceRefusesAConnectionThatCannotBe(t *testing.T) {
	set, rep := policies.Parse(policies.Source{Name: "p.hcl", Bytes: []byte("policy \"a\" {\n  selector = \"app=a\"\n}\n")})
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	r := &reconciler{}
	r.view.set(&view{set: set})
	base := api.TraceRequest{FromEntity: "world", ToLabels: map[string]string{"app": "a"}}
	for name, tweak := range map[string]func(*api.TraceRequest){
		"http over udp":  func(q *api.TraceRequest) { q.Proto, q.Port, q.HTTPMethod, q.HTTPPath = "udp", 53, "GET", "/" },
		"icmp with port": func(q *api.TraceRequest) { q.Proto, q.Port = "icmp", 80 },
		"tcp no port":    func(q *api.TraceRequest) { q.Proto = "tcp" },
		"port no proto":  func(q *api.TraceRequest) { q.Port = 80 },
		"icmp type, tcp": func(q *api.TraceRequest) { q.Proto, q.Port, q.ICMPType = "tcp", 80, new(uint8) },
		"http no path":   func(q *api.TraceRequest) { q.Proto, q.Port, q.HTTPMethod = "tcp", 80, "GET" },
	} {
		req := base
		tweak(&req)
		var bad *api.BadRequestError
		if _, err := (&backend{r: r}).Trace(context.Background(), req); !errors.As(err, &bad) {
			t.Errorf("%s: err %v, want a bad request", name, err)
		}
	}
	req := base
	req.Proto, req.Port, req.HTTPMethod, req.HTTPPath = "tcp", 80, "GET", "/"
	if _, err := (&backend{r: r}).Trace(context.Background(), req); err != nil {
		t.Errorf("a TCP connection with a request: %v", err)
	}
}

// A live trace's misspelt entity gets the "did you mean" that the CLI's
// flag and a policy file's entity get (decision 73), for API clients that
// are not the CLI.
func TestLiveTraceEntitySuggests(t *testing.T) {
	r := &reconciler{}
	r.view.set(&view{set: &policies.Set{}})
	_, err := (&backend{r: r}).Trace(context.Background(), api.TraceRequest{FromEntity: "hots", ToEntity: "world"})
	var bad *api.BadRequestError
	if !errors.As(err, &bad) || !strings.Contains(err.Error(), `did you mean "host"?`) {
		t.Errorf("live trace from entity hots: %v, want a bad request suggesting host", err)
	}
}

// A container named by an ID prefix that more than one container's ID
// starts with is not "not a managed endpoint": the answer says the prefix
// is ambiguous, so that the user gives more of it.
func TestAmbiguousContainerPrefixIsSaidSo(t *testing.T) {
	set, rep := policies.Parse(policies.Source{Name: "p.hcl", Bytes: []byte("policy \"a\" {\n  selector = \"app=a\"\n}\n")})
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	r := &reconciler{}
	r.view.set(&view{set: set, endpoints: []api.Endpoint{
		{ID: 1, Containers: []api.Container{{ID: "abcd1111", Name: "one"}}},
		{ID: 2, Containers: []api.Container{{ID: "abcd2222", Name: "two"}}},
	}, epLabels: []policies.Labels{{}, {}}})
	_, err := (&backend{r: r}).Trace(context.Background(), api.TraceRequest{FromContainer: "abcd", ToEntity: "world"})
	if err == nil || !strings.Contains(err.Error(), "more than one") {
		t.Errorf("trace from an ambiguous prefix: %v", err)
	}
	if _, err := (&backend{r: r}).Trace(context.Background(), api.TraceRequest{FromContainer: "abcd1", ToEntity: "world"}); err != nil {
		t.Errorf("trace from a unique prefix: %v", err)
	}
	// membrane endpoint get: the answer says what a reference may be,
	// a unique prefix among them.
	sock := serveAPI(t, r)
	if _, err := api.NewClient(sock).Endpoint(context.Background(), "abcd"); err == nil || !strings.Contains(err.Error(), "prefix of one container's ID") {
		t.Errorf("endpoint get of an ambiguous prefix: %v", err)
	}
}

// membraned --cleanup removes the API socket, and only a socket: an
// api_socket that names another file (a slip in membrane.hcl, such as a
// path meant for another attribute) is left in place.
func TestCleanupRemovesOnlyTheAPISocket(t *testing.T) {
	dir := t.TempDir()
	notSocket := filepath.Join(dir, "membrane.hcl")
	if err := os.WriteFile(notSocket, []byte("audit = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.BPFFSDir = filepath.Join(dir, "no-pins")
	cfg.APISocket = notSocket
	if err := CleanupDatapath(cfg); err == nil {
		t.Errorf("CleanupDatapath with an api_socket that is a regular file: no error")
	}
	if _, err := os.Stat(notSocket); err != nil {
		t.Fatalf("CleanupDatapath removed a file that is not a socket: %v", err)
	}
	ln, err := api.Listen(filepath.Join(dir, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	cfg.APISocket = filepath.Join(dir, "api.sock")
	if err := CleanupDatapath(cfg); err != nil {
		t.Fatalf("CleanupDatapath: %v", err)
	}
	if _, err := os.Lstat(cfg.APISocket); !os.IsNotExist(err) {
		t.Errorf("the API socket is still there: %v", err)
	}
}

// serveAPI serves the local API of r's backend on a socket of the test's
// until it ends, and returns the socket's path.
func serveAPI(t *testing.T, r *reconciler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	srv, err := api.NewServer(api.Options{Socket: sock}, &backend{r: r})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock
}

// membrane status lists what keeps the Envoy engine from serving as it is
// now, between reconciles: here an "envoy" (/bin/false, a stand-in) that
// exits at every start. The published view's own problems stay as they were.
func TestStatusReportsAnEnvoyThatKeepsExiting(t *testing.T) {
	e, err := envoy.New(envoy.Config{Port: 15001, RunDir: t.TempDir(), EnvoyPath: "/bin/false"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	r := &reconciler{l7: &l7{engine: e}}
	published := []string{"map full"}
	r.view.set(&view{status: api.Status{Errors: published}})
	b := &backend{r: r}
	deadline := time.Now().Add(20 * time.Second)
	for len(b.Status().Errors) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("status errors %q never said that envoy exits", b.Status().Errors)
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := b.Status().Errors
	if got[0] != "map full" || !strings.Contains(got[1], "envoy exited") || !strings.Contains(got[1], "exit status 1") {
		t.Fatalf("status errors %q, want the published problem, then that envoy exits (exit status 1)", got)
	}
	if len(published) != 1 || len(r.view.get().status.Errors) != 1 {
		t.Fatalf("the published view's errors changed: %q", r.view.get().status.Errors)
	}
}
