package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon"
	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/internal/testenv"
)

// The shop: a Compose-labelled frontend may call the api on 8080 and 9000;
// only the api may call the db; the frontend is explicitly denied the db.
const shopPolicies = `
policy "api" {
  selector = "app=api,e2e=SFX"
  ingress {
    from_endpoints = ["compose.service=frontend,e2e=SFX"]
    ports          = ["8080/tcp", "9000/tcp"]
  }
}

policy "db" {
  selector = "app=db,e2e=SFX"
  ingress {
    from_endpoints = ["app=api,e2e=SFX"]
    ports          = ["8080/tcp"]
  }
}

policy "frontend" {
  selector = "compose.service=frontend,e2e=SFX"
  egress_deny {
    to_endpoints = ["app=db,e2e=SFX"]
  }
}
`

var frontendLabels = []string{"com.docker.compose.project=shop", "com.docker.compose.service=frontend", "com.docker.compose.container-number=1"}

type shop struct {
	frontend, api, db string
	apiIP, dbIP       string
}

func startShop(e *env) shop {
	e.writePolicy("shop.hcl", shopPolicies)
	e.startDaemon()
	return shopContainers(e)
}

// shopContainers starts the shop's containers under a running daemon and
// waits until each is a managed endpoint.
func shopContainers(e *env) shop {
	s := shop{
		frontend: e.idle("frontend", frontendLabels...),
		api:      e.server("api", "app=api"),
		db:       e.server("db", "app=db"),
	}
	s.apiIP, s.dbIP = e.ip(s.api), e.ip(s.db)
	for _, c := range []string{s.frontend, s.api, s.db} {
		e.endpoint(c)
	}
	return s
}

func (s shop) check(t *testing.T, e *env, when string) {
	t.Helper()
	for _, c := range []struct {
		from, to, toIP string
		allowed        bool
	}{
		{s.frontend, "api", s.apiIP, true},
		{s.api, "db", s.dbIP, true},
		{s.frontend, "db", s.dbIP, false},
		{s.db, "api", s.apiIP, false},
	} {
		if got := e.get(c.from, c.toIP); got != c.allowed {
			t.Errorf("%s: %s -> %s: allowed=%v, want %v", when, c.from, c.to, got, c.allowed)
		}
	}
}

// checkNewAPI starts an api container with a label set never seen before
// (a new identity, whose policy only the enforced set can give) and checks
// that the frontend reaches it and db does not.
func (s shop) checkNewAPI(t *testing.T, e *env, when string) {
	t.Helper()
	api2 := e.server("api2", "app=api", "tier=two")
	e.endpoint(api2)
	ip := e.ip(api2)
	e.eventually("frontend reaches the new api", 10*time.Second, func() error {
		if !e.get(s.frontend, ip) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})
	if e.get(s.db, ip) {
		t.Errorf("%s: db reached a new api container", when)
	}
}

func TestShopAllowDenyMatrixWithComposeLabels(t *testing.T) {
	e := newEnv(t, envOpts{})
	s := startShop(e)
	// The first allowed request may race the last endpoint write; retry
	// once before judging the matrix.
	e.eventually("frontend reaches api", 10*time.Second, func() error {
		if !e.get(s.frontend, s.apiIP) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})
	s.check(t, e, "steady")

	// Compose labels are derived and the volatile ones left out of the
	// identity.
	fe := e.endpoint(s.frontend)
	if fe.Labels["compose.service"] != "frontend" || fe.Labels["compose.project"] != "shop" {
		t.Errorf("frontend labels lack compose.*: %v", fe.Labels)
	}
	ids, err := e.client.Identities(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if id.ID == fe.Identity {
			if _, ok := id.Labels["com.docker.compose.container-number"]; ok {
				t.Errorf("identity %d keeps the volatile container-number label: %v", id.ID, id.Labels)
			}
			if id.Labels["compose.service"] != "frontend" {
				t.Errorf("identity %d labels %v", id.ID, id.Labels)
			}
		}
	}
	if !strings.Contains(strings.Join(fe.Policies, ","), "frontend") {
		t.Errorf("frontend endpoint policies %v", fe.Policies)
	}

	// `membrane observe`: the frontend -> db drop names the egress_deny
	// rule of policy "frontend".
	var drop *api.Flow
	e.eventually("drop record", 5*time.Second, func() error {
		for _, f := range e.observe(api.ObserveFilter{Verdict: "dropped", Container: s.frontend}) {
			if f.Dest.IP == s.dbIP && f.Rule != nil {
				drop = &f
				return nil
			}
		}
		e.get(s.frontend, s.dbIP)
		return os.ErrNotExist
	})
	if drop.Rule.Policy != "frontend" || drop.Rule.Block != "egress_deny" || drop.Direction != "egress" || drop.Reason != "policy-deny" || drop.Protocol != "tcp" || drop.Dest.Port != 8080 {
		t.Errorf("drop record %s", dump(drop))
	}
	if drop.Source.Identity != fe.Identity || drop.Source.Labels["compose.service"] != "frontend" || drop.Dest.Labels["app"] != "db" {
		t.Errorf("drop record ends %s", dump(drop))
	}

	// Live trace by container agrees.
	tr, err := e.client.Trace(context.Background(), api.TraceRequest{FromContainer: s.frontend, ToContainer: s.db, Proto: "tcp", Port: 8080})
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Verdict string `json:"verdict"`
		Egress  string `json:"egress"`
		Matched []struct{ Policy, Block string }
	}
	if err := json.Unmarshal(tr.Result, &res); err != nil {
		t.Fatal(err)
	}
	if res.Verdict != "denied" || res.Egress != "denied" || len(res.Matched) == 0 || res.Matched[0].Policy != "frontend" {
		t.Errorf("live trace frontend -> db: %s", tr.Result)
	}
}

func TestNomadPauseContainerLabels(t *testing.T) {
	e := newEnv(t, envOpts{extraConfig: "flow_sample = 1"})
	e.writePolicy("nomad.hcl", `
policy "nomad-api" {
  selector = "nomad.job=shop,nomad.task=api,e2e=SFX"
  ingress {
    from_endpoints = ["role=client,e2e=SFX"]
    ports          = ["8080"]
  }
}
`)
	e.startDaemon()
	pause := e.idle("pause")
	e.run("task", []string{
		"com.hashicorp.nomad.job_name=shop", "com.hashicorp.nomad.task_group_name=web",
		"com.hashicorp.nomad.task_name=api", "com.hashicorp.nomad.namespace=default",
		"com.hashicorp.nomad.alloc_id=0b7d3c9e-aaaa-bbbb-cccc-0123456789ab",
	}, "echo ok > /var/www/index.html; httpd -f -p 8080 -h /var/www", "--network", "container:"+pause)
	client := e.idle("client", "role=client")
	other := e.idle("other", "role=other")
	e.endpoint(client)
	e.endpoint(other)
	var ep api.Endpoint
	e.eventually("pause endpoint carries the task's nomad labels", 20*time.Second, func() error {
		ep = e.endpoint(pause)
		if ep.Labels["nomad.task"] != "api" || ep.Labels["nomad.job"] != "shop" || len(ep.Containers) != 2 {
			return os.ErrNotExist
		}
		return nil
	})
	if _, ok := ep.Labels["com.hashicorp.nomad.alloc_id"]; ok {
		ids, _ := e.client.Identities(context.Background())
		for _, id := range ids {
			if id.ID == ep.Identity {
				if _, ok := id.Labels["com.hashicorp.nomad.alloc_id"]; ok {
					t.Errorf("alloc_id is identity-relevant: %v", id.Labels)
				}
			}
		}
	}
	ip := e.ip(pause)
	e.eventually("client reaches the task", 10*time.Second, func() error {
		if !e.get(client, ip) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})
	if e.get(other, ip) {
		t.Error("a non-client reached the nomad task")
	}
	// flow_sample = 1: every new allowed flow is reported too.
	e.eventually("allowed flow record", 5*time.Second, func() error {
		for _, f := range e.observe(api.ObserveFilter{Verdict: "allowed"}) {
			if f.Dest.IP == ip && f.Dest.Port == 8080 {
				return nil
			}
		}
		return os.ErrNotExist
	})
}

// A container can join the network namespace of one that joined another
// (`--network container:B` where B runs with `--network container:A`,
// Compose's `network_mode: service:b` on a service that has one too):
// Docker puts it in A's namespace. It belongs to A's endpoint like any
// joined container, and its labels count: a label that B carries and it
// does not is not shared by every joined container. It used to be left
// out of the endpoint (unknown to `membrane endpoint get`), and B's label
// went into the identity of the namespace it shares.
func TestContainerJoinedThroughAJoinedOneBelongsToTheEndpoint(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writePolicy("db.hcl", `
policy "db" {
  selector = "app=db,e2e=SFX"
  ingress {
    from_endpoints = ["team=pay,e2e=SFX"]
    ports          = ["8080/tcp"]
  }
}
`)
	e.startDaemon()
	db := e.server("db", "app=db")
	a := e.idle("a", "app=web")
	b := e.run("b", []string{"team=pay"}, "sleep 600", "--network", "container:"+a)
	c := e.run("c", nil, "sleep 600", "--network", "container:"+b)
	e.endpoint(db)
	// c started after b: once b is in a's endpoint, c's start has been
	// seen too (the events come in order).
	var ep api.Endpoint
	e.eventually("b in a's endpoint", 20*time.Second, func() error {
		var err error
		if ep, err = e.client.Endpoint(context.Background(), a); err != nil {
			return err
		}
		if len(ep.Containers) < 2 {
			return fmt.Errorf("containers %+v", ep.Containers)
		}
		return nil
	})
	time.Sleep(time.Second)
	ep = e.endpoint(a)
	var names []string
	for _, ct := range ep.Containers {
		names = append(names, ct.Name)
	}
	if len(names) > 1 {
		slices.Sort(names[1:]) // joined ones in id order
	}
	if want := []string{a, b, c}; !slices.Equal(names, want) {
		t.Errorf("a's endpoint has containers %v, want %v", names, want)
	}
	if _, ok := ep.Labels["team"]; ok {
		t.Errorf("labels %v: team is not shared by every joined container", ep.Labels)
	}
	dbIP := e.ip(db)
	if e.get(c, dbIP) {
		t.Error("c reaches db, which takes team=pay only")
	}
}

// TestJoinedContainerLeftBehindByItsOwnersRestartLeavesTheEndpoint: a
// container that joined another's namespace (network_mode container:X)
// stays in that namespace when X restarts; X gets a new one, without it.
// Its labels must no longer count for X's endpoint: X alone would otherwise
// carry the joined container's identity and its rights.
func TestJoinedContainerLeftBehindByItsOwnersRestartLeavesTheEndpoint(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writePolicy("db.hcl", `
policy "db" {
  selector = "app=db,e2e=SFX"
  ingress {
    from_endpoints = ["team=pay,e2e=SFX"]
    ports          = ["8080/tcp"]
  }
}
`)
	e.startDaemon()
	db := e.server("db", "app=db")
	pod := e.idle("pod")
	app := e.run("app", []string{"team=pay"}, "sleep 600", "--network", "container:"+pod)
	e.endpoint(db)
	dbIP := e.ip(db)
	e.eventually("app's labels on pod's endpoint", 20*time.Second, func() error {
		if ep := e.endpoint(pod); ep.Labels["team"] != "pay" {
			return fmt.Errorf("labels %v", ep.Labels)
		}
		return nil
	})
	if !e.get(pod, dbIP) {
		t.Fatal("pod's namespace, holding a team=pay container, does not reach db")
	}

	before := e.endpoint(pod).ID
	e.docker("restart", "-t", "1", pod)
	// app is now alone in the namespace it had, which Docker took pod's
	// interface out of; pod runs in a new one (a new endpoint).
	e.eventually("pod enforced again", 20*time.Second, func() error {
		if ep := e.endpoint(pod); ep.ID == before {
			return fmt.Errorf("endpoint %d still the one before the restart", ep.ID)
		}
		return nil
	})
	time.Sleep(time.Second)
	ep := e.endpoint(pod)
	for _, c := range ep.Containers {
		if c.Name == app {
			t.Errorf("pod's new endpoint lists %s, which stayed in pod's old namespace", app)
		}
	}
	if ep.Labels["team"] == "pay" {
		t.Errorf("pod's new endpoint has labels %v: team=pay is the label of a container no longer in it", ep.Labels)
	}
	if e.get(pod, dbIP) {
		t.Error("pod alone reaches db, which takes team=pay only")
	}

	// Restarted, app joins pod's new namespace and counts again.
	e.docker("restart", "-t", "1", app)
	e.eventually("app back on pod's endpoint", 20*time.Second, func() error {
		if ep := e.endpoint(pod); ep.Labels["team"] != "pay" || len(ep.Containers) != 2 {
			return fmt.Errorf("endpoint %+v", ep)
		}
		return nil
	})
	if !e.get(pod, dbIP) {
		t.Error("pod's namespace, holding app again, does not reach db")
	}
}

// TestContainerNamedLikeAnEndpointIDIsTheOneTraced: Docker accepts names
// that read as numbers ("07"). `policy trace --live --from-container` and
// `endpoint get` must answer for that container, not for the endpoint whose
// id the number is.
func TestContainerNamedLikeAnEndpointIDIsTheOneTraced(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writePolicy("db.hcl", dbFromAPIPolicy)
	e.startDaemon()
	db := e.server("db", "app=db")
	a := e.idle("a", "app=api")
	aEP := e.endpoint(a)
	// A name that parses as a's endpoint id, on a container that db refuses.
	numeric := fmt.Sprintf("0%d", aEP.ID)
	e.docker("run", "-d", "--name", numeric, "--network", e.network, "--label", "e2e="+e.sfx, "--label", "app=web", e.image, "sleep", "600")
	e.names = append(e.names, numeric)
	dbIP := e.ip(db)
	e.endpoint(db)
	ep := e.endpoint(numeric)
	if len(ep.Containers) != 1 || ep.Containers[0].Name != numeric {
		t.Errorf("endpoint get %s: endpoint %d of %+v", numeric, ep.ID, ep.Containers)
	}
	if !e.get(a, dbIP) || e.get(numeric, dbIP) {
		t.Fatalf("traffic: want %s allowed to db and %s refused", a, numeric)
	}
	tr, err := e.client.Trace(context.Background(), api.TraceRequest{FromContainer: numeric, ToContainer: db, Proto: "tcp", Port: 8080})
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Verdict string `json:"verdict"`
	}
	if err := json.Unmarshal(tr.Result, &res); err != nil {
		t.Fatal(err)
	}
	if res.Verdict != "denied" {
		t.Errorf("live trace from container %s -> db: %s (the traffic is refused)", numeric, tr.Result)
	}
}

// TestObserveByContainerIDOrJoinedName: `membrane observe --container`
// takes a name or an id, as its help says, and a container that joined
// another's namespace names that endpoint's records too.
func TestObserveByContainerIDOrJoinedName(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writePolicy("db.hcl", dbFromAPIPolicy)
	e.startDaemon()
	db := e.server("db", "app=db")
	web := e.idle("web", "app=web")
	side := e.run("side", nil, "sleep 600", "--network", "container:"+web)
	e.endpoint(db)
	e.eventually("side in web's endpoint", 20*time.Second, func() error {
		if ep := e.endpoint(web); len(ep.Containers) != 2 {
			return fmt.Errorf("containers %+v", ep.Containers)
		}
		return nil
	})
	if e.get(web, e.ip(db)) {
		t.Fatal("web reached db")
	}
	id := e.docker("inspect", "-f", "{{.Id}}", web)
	e.eventually("the drop recorded", 10*time.Second, func() error {
		if len(e.observe(api.ObserveFilter{Verdict: "dropped", Container: web})) == 0 {
			return os.ErrNotExist
		}
		return nil
	})
	for _, ref := range []string{id, id[:12], side} {
		if got := e.observe(api.ObserveFilter{Verdict: "dropped", Container: ref}); len(got) == 0 {
			t.Errorf("observe --container %s: no records (by name %s there are)", ref, web)
		}
	}
	if got := e.observe(api.ObserveFilter{Verdict: "dropped", Container: "mte2e-" + e.sfx + "-nosuch"}); len(got) != 0 {
		t.Errorf("observe --container of no container: %d records", len(got))
	}
}

// TestAddressOfAContainerRemovedWhileTheDaemonIsDownIsNotItsIdentity: with
// membraned stopped, a container is removed and a new one (no labels) gets
// its address. Its veth has no program yet, and the ipcache still gives the
// address the removed container's identity; the peers' ingress must not
// take it for that one.
func TestAddressOfAContainerRemovedWhileTheDaemonIsDownIsNotItsIdentity(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writePolicy("db.hcl", dbFromAPIPolicy)
	e.startDaemon()
	db := e.server("db", "app=db")
	api := e.idle("api", "app=api")
	e.endpoint(db)
	e.endpoint(api)
	dbIP, apiIP := e.ip(db), e.ip(api)
	if !e.get(api, dbIP) {
		t.Fatal("api does not reach db")
	}

	e.stopDaemon(syscall.SIGTERM)
	e.docker("rm", "-f", api)
	evil := e.idle("evil")
	if got := e.ip(evil); got != apiIP {
		t.Fatalf("the new container got %s, not the removed one's %s", got, apiIP)
	}
	if e.get(evil, dbIP) {
		t.Error("while membraned is down, a new container with a removed one's address reaches db as app=api")
	}

	e.startDaemon()
	e.endpoint(evil)
	if e.get(evil, dbIP) {
		t.Error("the new container reaches db once membraned runs")
	}
	api2 := e.idle("api2", "app=api")
	e.endpoint(api2)
	if !e.get(api2, dbIP) {
		t.Error("a new api container does not reach db")
	}
}

func TestLivePolicyEditAndBrokenEdit(t *testing.T) {
	metrics := freePort(t)
	e := newEnv(t, envOpts{metrics: metrics})
	s := startShop(e)
	f := e.startFlow(s.frontend, s.api)
	rev := e.status().PolicyRevision

	// A broken edit is rejected whole with its position; the last good
	// set stays enforced (the flow keeps going, the matrix holds).
	e.writePolicy("zz-broken.hcl", "policy \"broken\" {\n  selector = \"app=x\"\n  ingres {\n  }\n}\n")
	st := e.waitRevision(rev, true)
	pe := st.LastPolicyError
	if st.PolicyRevision != rev || len(pe.Diagnostics) == 0 || !strings.HasSuffix(pe.Diagnostics[0].File, "zz-broken.hcl") || pe.Diagnostics[0].Line != 3 {
		t.Fatalf("broken edit: revision %d (was %d), error %s", st.PolicyRevision, rev, dump(pe))
	}
	if v, ok := scrape(t, metrics, "membrane_policy_load_errors_total"); !ok || v != 1 {
		t.Errorf("membrane_policy_load_errors_total = %v (found %v), want 1", v, ok)
	}
	if v, _ := scrape(t, metrics, "membrane_policy_load_failing"); v != 1 {
		t.Errorf("membrane_policy_load_failing = %v, want 1", v)
	}
	if v, _ := scrape(t, metrics, "membrane_policy_revision"); v != float64(rev) {
		t.Errorf("membrane_policy_revision = %v, want %d", v, rev)
	}
	if !f.flowing(500 * time.Millisecond) {
		t.Error("allowed flow stopped after a rejected edit")
	}
	s.check(t, e, "after broken edit")
	os.Remove(filepath.Join(e.dir, "policies", "zz-broken.hcl"))
	st = e.waitRevision(rev, false)
	rev = st.PolicyRevision

	// A live edit: the api now takes 8080 only. New connections follow it
	// and the established flow to 9000 is cut at its next packet.
	e.writePolicy("shop.hcl", strings.Replace(shopPolicies, `["8080/tcp", "9000/tcp"]`, `["8080/tcp"]`, 1))
	e.waitRevision(rev, false)
	time.Sleep(300 * time.Millisecond)
	if f.flowing(time.Second) {
		t.Error("established flow that the new policy denies still passes")
	}
	if !e.get(s.frontend, s.apiIP) {
		t.Error("frontend -> api:8080 denied after the edit")
	}
}

func TestFirstPacketOfNewContainerIsJudged(t *testing.T) {
	e := newEnv(t, envOpts{})
	s := startShop(e)
	// The container's very first action is a denied connection: it must
	// fail even though membraned learns of the container only as it starts.
	for i := range 2 {
		name := e.run("eager"+string(rune('a'+i)), frontendLabels,
			"if "+httpGet(s.dbIP, 2)+"; then echo LEAK; else echo BLOCKED; fi; sleep 600")
		e.eventually("eager container done", 15*time.Second, func() error {
			out, _ := exec.Command("docker", "logs", name).CombinedOutput()
			switch strings.TrimSpace(string(out)) {
			case "BLOCKED":
				return nil
			case "LEAK":
				t.Fatalf("%s: first denied connection passed", name)
			}
			return fmt.Errorf("output %q", out)
		})
	}
	// And a new frontend whose first action is an allowed call gets
	// through (TCP retries cover the moment its endpoint is learnt).
	ok := e.run("polite", frontendLabels, "if "+httpGet(s.apiIP, 5)+"; then echo OK; else echo FAIL; fi; sleep 600")
	e.eventually("polite container done", 15*time.Second, func() error {
		out, _ := exec.Command("docker", "logs", ok).CombinedOutput()
		switch strings.TrimSpace(string(out)) {
		case "OK":
			return nil
		case "FAIL":
			t.Fatalf("first allowed connection of a new container failed")
		}
		return fmt.Errorf("output %q", out)
	})
}

func TestAuditModeLetsDropThroughAndReportsIt(t *testing.T) {
	e := newEnv(t, envOpts{extraConfig: `audit_selector = "audit=yes"`})
	e.writePolicy("shop.hcl", shopPolicies)
	e.startDaemon()
	db := e.server("db", "app=db", "audit=yes")
	stranger := e.idle("stranger", "app=stranger")
	dbEp := e.endpoint(db)
	e.endpoint(stranger)
	if !dbEp.Audit {
		t.Errorf("db endpoint not in audit mode: %s", dump(dbEp))
	}
	ip := e.ip(db)
	e.eventually("audited request passes", 10*time.Second, func() error {
		if !e.get(stranger, ip) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})
	e.eventually("audit record", 5*time.Second, func() error {
		for _, f := range e.observe(api.ObserveFilter{Verdict: "audit"}) {
			if f.Dest.IP == ip && f.Direction == "ingress" {
				return nil
			}
		}
		return os.ErrNotExist
	})
}

func TestContainerRestartKeepsIdentity(t *testing.T) {
	e := newEnv(t, envOpts{})
	s := startShop(e)
	before := e.endpoint(s.api)
	e.docker("restart", "-t", "0", s.api)
	var after api.Endpoint
	e.eventually("api back", 20*time.Second, func() error {
		after = e.endpoint(s.api)
		if len(after.Interfaces) == 0 || len(before.Interfaces) == 0 || after.Interfaces[0].Ifindex == before.Interfaces[0].Ifindex {
			return os.ErrNotExist // still the old veth
		}
		return nil
	})
	if after.Identity != before.Identity {
		t.Errorf("identity changed across a container restart: %d -> %d", before.Identity, after.Identity)
	}
	s.apiIP = e.ip(s.api)
	e.eventually("frontend reaches restarted api", 10*time.Second, func() error {
		if !e.get(s.frontend, s.apiIP) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})
	s.check(t, e, "after container restart")
}

// TestDaemonKilledAndRestartedKeepsEnforcing SIGKILLs membraned: the
// pinned datapath goes on alone (allowed flow continues, denied requests
// stay denied), and the restarted daemon adopts it without a gap.
func TestDaemonKilledAndRestartedKeepsEnforcing(t *testing.T) {
	e := newEnv(t, envOpts{})
	s := startShop(e)
	idsBefore := map[string]uint32{}
	for _, c := range []string{s.frontend, s.api, s.db} {
		idsBefore[c] = e.endpoint(c).Identity
	}
	f := e.startFlow(s.frontend, s.api)
	// A prober hammering a denied path the whole time.
	e.docker("exec", "-d", s.db, "sh", "-c", "while :; do "+httpGet(s.apiIP, 1)+" && echo LEAK >> /tmp/leaks; sleep 0.05; done")

	e.stopDaemon(syscall.SIGKILL)
	down := f.bytes()
	time.Sleep(1500 * time.Millisecond)
	if f.bytes() <= down {
		t.Error("allowed flow stopped while membraned was down")
	}
	if e.get(s.db, s.apiIP) {
		t.Error("denied request passed while membraned was down")
	}
	if !e.get(s.frontend, s.apiIP) {
		t.Error("allowed request failed while membraned was down")
	}
	restart := f.bytes()
	e.startDaemon()
	if !f.flowing(time.Second) || f.bytes() <= restart {
		t.Error("allowed flow stopped across the restart")
	}
	for c, id := range idsBefore {
		if got := e.endpoint(c).Identity; got != id {
			t.Errorf("%s identity %d -> %d across the daemon restart", c, id, got)
		}
	}
	s.check(t, e, "after daemon restart")
	if out, _ := exec.Command("docker", "exec", s.db, "sh", "-c", "cat /tmp/leaks 2>/dev/null | wc -l").CombinedOutput(); strings.TrimSpace(string(out)) != "0" {
		t.Errorf("%s denied requests passed during the kill and restart", strings.TrimSpace(string(out)))
	}
	// SIGTERM leaves the datapath in place as well.
	e.stopDaemon(syscall.SIGTERM)
	if !f.flowing(time.Second) {
		t.Error("allowed flow stopped after SIGTERM")
	}
	if e.get(s.db, s.apiIP) {
		t.Error("denied request passed after SIGTERM")
	}
	if _, err := os.Stat(e.pinDir); err != nil {
		t.Errorf("pins gone after SIGTERM: %v", err)
	}
	// `membraned --cleanup` with the same config removes every pin and
	// attachment: nothing filters the containers any more.
	cfg, err := config.Load(e.cfgPath, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := daemon.Cleanup(cfg); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if _, err := os.Stat(e.pinDir); !os.IsNotExist(err) {
		t.Errorf("pin directory still there after cleanup: %v", err)
	}
	e.eventually("denied path open after cleanup", 5*time.Second, func() error {
		if !e.get(s.db, s.apiIP) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})
}

// TestDockerdRestartIsSurvived kills dockerd under a running membraned.
// While it is gone, `membrane status` names the lost connection,
// membrane_runtime_connected{runtime="docker"} is 0, the datapath goes on
// enforcing (judged through nsenter: docker exec needs dockerd), and a
// policy edit applies to the endpoints as last known. Once
// it is back the loss is cleared, membrane_runtime_reconnects_total counts
// it, and what happened meanwhile is caught up: the container dockerd did
// not restart (no restart policy) is gone from the endpoints, the
// restarted ones are enforced on their new veths, each in one endpoint,
// with their identities.
func TestDockerdRestartIsSurvived(t *testing.T) {
	testenv.RequireBinary(t, "dockerd")
	metrics := freePort(t)
	e := newEnv(t, envOpts{metrics: metrics})
	e.writePolicy("shop.hcl", shopPolicies)
	e.startDaemon()
	s := shop{
		frontend: e.run("frontend", frontendLabels, "sleep 600", "--restart", "always"),
		api:      e.run("api", []string{"app=api"}, "echo ok > /var/www/index.html; httpd -f -p 8080 -h /var/www", "--restart", "always"),
		db:       e.run("db", []string{"app=db"}, "echo ok > /var/www/index.html; httpd -f -p 8080 -h /var/www", "--restart", "always"),
	}
	gone := e.idle("gone", "app=gone") // no restart policy
	for _, c := range []string{s.frontend, s.api, s.db, gone} {
		e.endpoint(c)
	}
	apiID := e.endpoint(s.api).Identity
	s.apiIP = e.ip(s.api)
	connected := func() float64 {
		v, ok := scrape(t, metrics, `membrane_runtime_connected{runtime="docker"}`)
		if !ok {
			return -1
		}
		return v
	}
	if c := connected(); c != 1 {
		t.Errorf("membrane_runtime_connected{runtime=\"docker\"} = %v before the loss, want 1", c)
	}
	pid := func(c string) string { return e.docker("inspect", "-f", "{{.State.Pid}}", c) }
	frontendPid, dbPid := pid(s.frontend), pid(s.db)
	getFrom := func(pid, ip string) bool {
		return exec.Command("nsenter", "-t", pid, "-m", "-n", "-p", "-u", "-i", "sh", "-c", httpGet(ip, 1)).Run() == nil
	}

	testenv.KillDockerd(t)
	e.eventually("status names the lost dockerd", 20*time.Second, func() error {
		for _, p := range e.status().Errors {
			if strings.Contains(p, "lost dockerd") {
				return nil
			}
		}
		return fmt.Errorf("problems %q", e.status().Errors)
	})
	if c := connected(); c != 0 {
		t.Errorf("membrane_runtime_connected{runtime=\"docker\"} = %v while dockerd is gone, want 0", c)
	}
	if !getFrom(frontendPid, s.apiIP) {
		t.Error("frontend does not reach api while dockerd is gone")
	}
	if getFrom(dbPid, s.apiIP) {
		t.Error("db reaches api while dockerd is gone")
	}
	// A policy edit meanwhile applies to the endpoints as last known.
	rev := e.status().PolicyRevision
	e.writePolicy("gap.hcl", `
policy "gap" {
  selector = "compose.service=frontend,e2e=SFX"
  egress_deny {
    to_endpoints = ["app=api,e2e=SFX"]
  }
}
`)
	rev = e.waitRevision(rev, false).PolicyRevision
	if getFrom(frontendPid, s.apiIP) {
		t.Error("frontend reaches api while dockerd is gone, after a policy edit that denies it")
	}
	if err := os.Remove(filepath.Join(e.dir, "policies", "gap.hcl")); err != nil {
		t.Fatal(err)
	}
	e.waitRevision(rev, false)
	if !getFrom(frontendPid, s.apiIP) {
		t.Error("frontend does not reach api while dockerd is gone, after the denying policy went")
	}
	if err := testenv.EnsureDockerd(); err != nil {
		t.Fatal(err)
	}
	// The containers come back with new veths; membraned reconnects,
	// resyncs, and enforces them again.
	e.eventually("containers running again", 60*time.Second, func() error {
		for _, c := range []string{s.frontend, s.api, s.db} {
			out, err := exec.Command("docker", "inspect", "-f", "{{.State.Running}}", c).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "true" {
				return os.ErrNotExist
			}
		}
		return nil
	})
	e.eventually("the loss cleared and counted", 20*time.Second, func() error {
		for _, p := range e.status().Errors {
			if strings.Contains(p, "dockerd") {
				return fmt.Errorf("status still says %q", p)
			}
		}
		if c := connected(); c != 1 {
			return fmt.Errorf("membrane_runtime_connected %v", c)
		}
		if n, _ := scrape(t, metrics, `membrane_runtime_reconnects_total{runtime="docker"}`); n < 1 {
			return fmt.Errorf("membrane_runtime_reconnects_total %v", n)
		}
		return nil
	})
	e.eventually("gone's endpoint removed", 20*time.Second, func() error {
		if _, err := e.client.Endpoint(context.Background(), gone); err == nil {
			return fmt.Errorf("%s still listed", gone)
		}
		return nil
	})
	s.apiIP, s.dbIP = e.ip(s.api), e.ip(s.db)
	for _, c := range []string{s.frontend, s.api, s.db} {
		e.endpoint(c)
	}
	e.eventually("frontend reaches api after the dockerd restart", 20*time.Second, func() error {
		if !e.get(s.frontend, s.apiIP) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})
	s.check(t, e, "after dockerd restart")
	if got := e.endpoint(s.api).Identity; got != apiID {
		t.Errorf("api identity %d -> %d across the dockerd restart", apiID, got)
	}
	eps, _ := e.client.Endpoints(context.Background())
	seen := map[string]int{}
	for _, ep := range eps {
		for _, c := range ep.Containers {
			seen[c.Name]++
		}
	}
	for _, c := range []string{s.frontend, s.api, s.db} {
		if seen[c] != 1 {
			t.Errorf("container %s in %d endpoints after the resync", c, seen[c])
		}
	}
}

// TestOutsiderCannotChangeAnything: a user who is neither root nor in the
// API group cannot change membraned through its socket.
func TestOutsiderCannotChangeAnything(t *testing.T) {
	e := newEnv(t, envOpts{extraConfig: `api_group = "membrane-e2e-nonexistent"`})
	e.writePolicy("shop.hcl", shopPolicies)
	e.startDaemon()
	bin := copyForOthers(t)
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), "MEMBRANE_E2E_WRITE="+e.sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65533, Gid: 65533}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "permission denied") {
		t.Fatalf("outsider's policy reload: err=%v out=%s", err, out)
	}
	// Root can.
	if _, err := e.client.ReloadPolicies(context.Background()); err != nil {
		t.Fatalf("root reload: %v", err)
	}
}

func copyForOthers(t *testing.T) string {
	dir, err := os.MkdirTemp("", "membrane-e2e-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "e2e.test")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSystemdNotify: READY=1 only after the first full reconcile, STATUS=
// with counts, WATCHDOG=1 from the reconcile loop, STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writePolicy("shop.hcl", shopPolicies)
	sock := filepath.Join(e.dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	e.daemonEnv = []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=400000"}
	e.startDaemon()
	want := map[string]bool{"READY=1": false, "STATUS=": false, "WATCHDOG=1": false}
	deadline := time.After(10 * time.Second)
	rev1 := false
	for !want["READY=1"] || !want["STATUS="] || !want["WATCHDOG=1"] {
		select {
		case m := <-msgs:
			for k := range want {
				if strings.HasPrefix(m, k) {
					want[k] = true
				}
			}
			// The set read at start takes revision 1 once the first
			// reconcile has checked it, before READY=1.
			rev1 = rev1 || strings.HasPrefix(m, "STATUS=") && strings.Contains(m, "3 policies (revision 1)")
			if strings.HasPrefix(m, "STATUS=") && !strings.Contains(m, "3 policies (revision 1)") && !strings.Contains(m, "3 policies (not checked against the maps yet)") {
				t.Errorf("status line without counts: %q", m)
			}
			if m == "READY=1" && !e.status().Reconciled {
				t.Error("READY=1 before the first reconcile")
			}
			if m == "READY=1" && !rev1 {
				t.Error("READY=1 before a status line with revision 1")
			}
		case <-deadline:
			t.Fatalf("notify messages seen: %v", want)
		}
	}
	e.stopDaemon(syscall.SIGTERM)
	stop := time.After(5 * time.Second)
	for {
		select {
		case m := <-msgs:
			if m == "STOPPING=1" {
				return
			}
		case <-stop:
			t.Fatal("no STOPPING=1 on SIGTERM")
		}
	}
}

// TestLastGoodSetSurvivesRestart: membraned restarted while the policy
// directory is invalid enforces the last set it accepted, also for
// containers that start afterwards.
func TestLastGoodSetSurvivesRestart(t *testing.T) {
	e := newEnv(t, envOpts{})
	s := startShop(e)
	e.eventually("last good set saved", 10*time.Second, func() error {
		_, err := os.Stat(filepath.Join(e.dir, "state", "last-good-policies.json"))
		return err
	})
	rev := e.status().PolicyRevision
	e.writePolicy("zz-broken.hcl", "policy \"broken\" {\n  selector = 42\n}\n")
	e.waitRevision(rev, true)
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon()
	st := e.status()
	if st.LastPolicyError == nil || st.Policies != 3 {
		t.Fatalf("after restart with a broken directory: %d policies, error %v", st.Policies, st.LastPolicyError)
	}
	s.checkNewAPI(t, e, "the last good set enforced")
}

// A container connected to a network whose bridge `bridges` does not name
// has a veth no program is attached to: its traffic there is not judged.
// Like a macvlan, that shows: the endpoint is not enforcing, the interface
// is named under unenforced and in status's problems. It used to show
// enforcing, since its other interface was.
func TestInterfaceOnAnUnmanagedBridgeIsShown(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.startDaemon()
	name := e.idle("dual")
	other, br := "mte2e-um-"+e.sfx, "mtum"+e.sfx[:6]
	e.docker("network", "create", "--driver", "bridge", "-o", "com.docker.network.bridge.name="+br, other)
	t.Cleanup(func() {
		exec.Command("docker", "network", "disconnect", "-f", other, name).Run()
		exec.Command("docker", "network", "rm", other).Run()
	})
	e.endpoint(name)
	e.docker("network", "connect", other, name)

	var ep api.Endpoint
	e.eventually("endpoint "+name+" known with its second interface", 20*time.Second, func() error {
		var err error
		if ep, err = e.client.Endpoint(context.Background(), name); err != nil {
			return err
		}
		if len(ep.Addresses) < 2 {
			return fmt.Errorf("endpoint %+v: one address", ep)
		}
		return nil
	})
	if ep.Enforcing || !strings.Contains(strings.Join(ep.Unenforced, " "), br) {
		t.Errorf("endpoint enforcing %v, unenforced %q; want not enforcing, the veth on %s named", ep.Enforcing, ep.Unenforced, br)
	}
	problems := strings.Join(e.status().Errors, "\n")
	if !strings.Contains(problems, name) || !strings.Contains(problems, br) {
		t.Errorf("status problems %q do not name %s's interface on %s", problems, name, br)
	}
	e.docker("network", "disconnect", other, name)
	e.eventuallyEnforcedWhole(name, "on its managed bridge alone")
}

// A container with an interface no program sees (here a macvlan on a host
// device, beside its bridge veth) is shown as not enforcing, with the
// interface named, in `membrane endpoint get` and in status's problems: its
// traffic on that interface is not judged at all.
func TestUnenforcedInterfaceIsShown(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.startDaemon()
	parent := "mtmv" + e.sfx[:6]
	if out, err := exec.Command("ip", "link", "add", parent, "type", "veth", "peer", "name", parent+"p").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", parent).Run() })
	mv := "mte2e-mv-" + e.sfx
	// A /24 of the test's own on a link that leads nowhere.
	subnet := fmt.Sprintf("10.79.%d.0/24", 1+int(e.sfx[0])%200)
	e.docker("network", "create", "--driver", "macvlan", "-o", "parent="+parent, "--subnet", subnet, mv)
	t.Cleanup(func() { exec.Command("docker", "network", "rm", mv).Run() })

	name := "mte2e-" + e.sfx + "-dual"
	e.docker("create", "--name", name, "--label", "e2e="+e.sfx, "--network", e.network, e.image, "sleep", "600")
	e.names = append(e.names, name)
	e.docker("network", "connect", mv, name)
	e.docker("start", name)

	var ep api.Endpoint
	e.eventually("endpoint "+name+" known with its macvlan", 20*time.Second, func() error {
		var err error
		if ep, err = e.client.Endpoint(context.Background(), name); err != nil {
			return err
		}
		if len(ep.Unenforced) == 0 {
			return fmt.Errorf("endpoint %+v: no unenforced interface", ep)
		}
		return nil
	})
	if ep.Enforcing || !strings.Contains(strings.Join(ep.Unenforced, " "), "macvlan on host device "+parent) {
		t.Errorf("endpoint enforcing %v, unenforced %q; want not enforcing, the macvlan on %s named", ep.Enforcing, ep.Unenforced, parent)
	}
	problems := strings.Join(e.status().Errors, "\n")
	if !strings.Contains(problems, name) || !strings.Contains(problems, "macvlan") {
		t.Errorf("status problems %q do not name %s's macvlan", problems, name)
	}
	// The same container on its bridge alone is enforced again.
	e.docker("network", "disconnect", mv, name)
	e.eventuallyEnforcedWhole(name, "without its macvlan")
}

// eventuallyEnforcedWhole waits until the endpoint of container name is
// enforced on every interface it has; when says after what.
func (e *env) eventuallyEnforcedWhole(name, when string) {
	e.t.Helper()
	e.eventually("endpoint "+name+" enforced "+when, 20*time.Second, func() error {
		ep, err := e.client.Endpoint(context.Background(), name)
		if err != nil {
			return err
		}
		if !ep.Enforcing || len(ep.Unenforced) > 0 {
			return fmt.Errorf("endpoint enforcing %v, unenforced %q", ep.Enforcing, ep.Unenforced)
		}
		return nil
	})
}

// TestDaemonRestartKeepsEndpointIDs: endpoint ids (`membrane endpoint get
// ID`, flow records) name the same containers, host-network ones too,
// after membraned restarts,
// SIGTERM or SIGKILL, also when it replaces the pinned maps (other map
// sizes), and a container started afterwards gets an id no endpoint had. The first container is gone before the restart, so
// numbering the endpoints found again afresh would move the others' ids.
func TestDaemonRestartKeepsEndpointIDs(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.startDaemon()
	gone := e.idle("gone", "app=gone")
	e.endpoint(gone)
	a := e.idle("a", "app=a")
	b := e.idle("b", "app=b")
	// A host-network container has no veth, so no endpoints map entry.
	host := e.run("host", []string{"app=host"}, "sleep 600", "--network", "host")
	hostID := func() uint32 {
		t.Helper()
		var ep api.Endpoint
		e.eventually("endpoint "+host, 20*time.Second, func() error {
			var err error
			ep, err = e.client.Endpoint(context.Background(), host)
			return err
		})
		return ep.ID
	}
	before := map[string]uint32{a: e.endpoint(a).ID, b: e.endpoint(b).ID}
	used := map[uint32]bool{e.endpoint(gone).ID: true}
	hostBefore := hostID()
	used[hostBefore] = true
	for _, id := range before {
		used[id] = true
	}
	e.docker("rm", "-f", gone)
	e.eventually("removed endpoint gone", 10*time.Second, func() error {
		if _, err := e.client.Endpoint(context.Background(), gone); err == nil {
			return fmt.Errorf("%s still listed", gone)
		}
		return nil
	})
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL, syscall.SIGTERM} {
		e.stopDaemon(sig)
		if i == 2 {
			// Other map sizes: the restarted daemon replaces the pinned
			// maps, as an upgrade that changes bpf.ABI does.
			f, err := os.OpenFile(e.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.WriteString("maps {\n  conntrack = 131072\n}\n")
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		e.startDaemon()
		when := sig.String()
		if i == 2 {
			when += ", maps replaced"
			if b, _ := os.ReadFile(e.logPath); !strings.Contains(string(b), "replacing them") {
				t.Fatal("the restarted daemon did not replace the maps")
			}
		}
		for c, id := range before {
			if got := e.endpoint(c).ID; got != id {
				t.Errorf("after %s: %s endpoint id %d -> %d", when, c, id, got)
			}
		}
		if got := hostID(); got != hostBefore {
			t.Errorf("after %s: host-network %s endpoint id %d -> %d", when, host, hostBefore, got)
		}
		fresh := e.idle(fmt.Sprintf("new%d", i), "app=new")
		id := e.endpoint(fresh).ID
		if used[id] {
			t.Errorf("after %s: new container got endpoint id %d, which another endpoint had", when, id)
		}
		used[id] = true
		before[fresh] = id
	}
	eps, err := e.client.Endpoints(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint32]string{}
	for _, ep := range eps {
		if other, dup := seen[ep.ID]; dup {
			t.Errorf("endpoint id %d given twice (%s, %v)", ep.ID, other, ep.Containers)
		}
		seen[ep.ID] = fmt.Sprint(ep.Containers)
	}
}
