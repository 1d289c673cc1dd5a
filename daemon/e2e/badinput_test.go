package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
)

// A policy file that is a symbolic link whose target disappears (a volume
// not mounted yet, a tool that deletes and recreates the target) cannot be
// read: the set is rejected with the link named, and the last good set,
// the link's policies included, stays enforced, across a restart too.
func TestDanglingPolicyLinkKeepsLastGoodSet(t *testing.T) {
	e, s, target, link := linkedShop(t)
	e.eventually("last good set saved", 10*time.Second, func() error {
		_, err := os.Stat(filepath.Join(e.dir, "state", "last-good-policies.json"))
		return err
	})
	rev := e.status().PolicyRevision

	if err := os.Remove(target); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.ReloadPolicies(context.Background()); err == nil || !strings.Contains(err.Error(), link+":1:1: error: Cannot read policy file") {
		t.Errorf("reload with a dangling link: err %v, want the link named (at 1:1: the whole file is unreadable)", err)
	}
	s.check(t, e, "after the link's target went away")
	st := e.status()
	pe := st.LastPolicyError
	if st.PolicyRevision != rev || st.Policies != 3 || pe == nil || len(pe.Diagnostics) != 1 || pe.Diagnostics[0].File != link || !strings.Contains(pe.Diagnostics[0].Summary, target) {
		t.Fatalf("dangling link: revision %d (was %d), %d policies, error %s", st.PolicyRevision, rev, st.Policies, dump(pe))
	}

	// A restart with the link still dangling enforces the last good set.
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon()
	if st := e.status(); st.LastPolicyError == nil || st.Policies != 3 {
		t.Fatalf("after restart with a dangling link: %d policies, error %v", st.Policies, st.LastPolicyError)
	}
	for _, c := range []string{s.frontend, s.api, s.db} {
		e.endpoint(c)
	}
	s.check(t, e, "after restart with the link dangling")
}

// linkedShop starts the shop with its policy file a symbolic link
// (policies/shop.hcl) to a file elsewhere (shared/shop.hcl), as
// configuration management or a mounted volume lays it out.
func linkedShop(t *testing.T) (e *env, s shop, target, link string) {
	t.Helper()
	e = newEnv(t, envOpts{})
	target = filepath.Join(e.dir, "shared", "shop.hcl")
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target, []byte(strings.ReplaceAll(shopPolicies, "SFX", e.sfx)), 0o644); err != nil {
		t.Fatal(err)
	}
	link = filepath.Join(e.dir, "policies", "shop.hcl")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	e.startDaemon()
	s = shopContainers(e)
	e.eventually("frontend reaches api", 10*time.Second, func() error {
		if !e.get(s.frontend, s.apiIP) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})
	s.check(t, e, "steady")
	return e, s, target, link
}

// Editing the file a policy link leads to is editing the policy set: a
// broken edit is reported with its position (the last good set staying
// enforced), a good one is enforced. Neither is left unseen because the
// change happened outside the policy directory.
func TestEditOfPolicyLinkTargetIsReloaded(t *testing.T) {
	e, s, target, link := linkedShop(t)
	rev := e.status().PolicyRevision

	if err := os.WriteFile(target, []byte("policy \"api\" {\n  selector = \"app=api\"\n  ingres {\n  }\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := e.waitRevision(rev, true)
	pe := st.LastPolicyError
	if st.PolicyRevision != rev || len(pe.Diagnostics) == 0 || pe.Diagnostics[0].File != link || pe.Diagnostics[0].Line != 3 {
		t.Fatalf("broken edit of the link's target: revision %d (was %d), error %s", st.PolicyRevision, rev, dump(pe))
	}
	s.check(t, e, "after a broken edit of the link's target")

	// Written the way editors do: a temporary renamed over the target.
	tightened := strings.Replace(strings.ReplaceAll(shopPolicies, "SFX", e.sfx), `["8080/tcp", "9000/tcp"]`, `["9000/tcp"]`, 1)
	if err := os.WriteFile(target+".tmp", []byte(tightened), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(target+".tmp", target); err != nil {
		t.Fatal(err)
	}
	e.waitRevision(rev, false)
	if e.get(s.frontend, s.apiIP) {
		t.Error("frontend -> api:8080 still allowed after the link's target took 8080 away")
	}
}

// manyPorts is a ports list of n single TCP ports from first on (each one
// a policy map entry per peer identity).
func manyPorts(first, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "\"%d/tcp\"", first+2*i)
	}
	return "[" + b.String() + "]"
}

// A valid set that the datapath cannot hold (here: the api's identity
// would need more entries than maps.policy_entries) is rejected like an
// invalid one, at the policies that select that identity; the last good
// set stays enforced, for containers that start afterwards too.
func TestPolicySetTooBigForTheMapsIsRejected(t *testing.T) {
	e := newEnv(t, envOpts{extraConfig: "maps {\n  policy_entries = 64\n}\n"})
	s := startShop(e)
	e.eventually("frontend reaches api", 10*time.Second, func() error {
		if !e.get(s.frontend, s.apiIP) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})
	rev := e.status().PolicyRevision

	e.writePolicy("zz-big.hcl", `
policy "api-big" {
  selector = "app=api,e2e=SFX"
  ingress {
    from_endpoints = ["compose.service=frontend,e2e=SFX"]
    ports          = `+manyPorts(20001, 70)+`
  }
}
`)
	st := e.waitRevision(rev, true)
	pe := st.LastPolicyError
	var atBig bool
	for _, d := range pe.Diagnostics {
		if strings.HasSuffix(d.File, "zz-big.hcl") && d.Line == 2 && strings.Contains(d.Summary, "policy_entries") {
			atBig = true
		}
	}
	if st.PolicyRevision != rev || st.Policies != 3 || !atBig {
		t.Errorf("set too big for the maps: revision %d (was %d), %d policies, error %s", st.PolicyRevision, rev, st.Policies, dump(pe))
	}
	s.check(t, e, "after a set too big for the maps")
	s.checkNewAPI(t, e, "the set that fits enforced")
}

// bigAPIPolicy selects the shop's api with more rules than
// maps.policy_entries = 64 holds.
func bigAPIPolicy() string {
	return `
policy "api-big" {
  selector = "app=api,e2e=SFX"
  ingress {
    from_endpoints = ["compose.service=frontend,e2e=SFX"]
    ports          = ` + manyPorts(20001, 70) + `
  }
}
`
}

// bigRejected reports whether pe rejects a set for zz-big.hcl's policy not
// fitting maps.policy_entries.
func bigRejected(pe *api.PolicyError) bool {
	if pe == nil {
		return false
	}
	for _, d := range pe.Diagnostics {
		if strings.HasSuffix(d.File, "zz-big.hcl") && d.Line == 2 && strings.Contains(d.Summary, "policy_entries") {
			return true
		}
	}
	return false
}

// A set too big for the maps when membraned starts is rejected as it is
// after start, like an invalid set: the last good set saved in the state
// directory is enforced; with none saved, nothing is loaded and the
// pinned policy maps stay as the previous daemon left them. It used to be
// accepted (and saved as the last good set), its identities' endpoints
// held back.
func TestPolicySetTooBigAtStartupIsRejected(t *testing.T) {
	e := newEnv(t, envOpts{extraConfig: "maps {\n  policy_entries = 64\n}\n"})
	s := startShop(e)
	lastGood := filepath.Join(e.dir, "state", "last-good-policies.json")
	e.eventually("last good set saved", 10*time.Second, func() error {
		_, err := os.Stat(lastGood)
		return err
	})
	e.eventually("frontend reaches api", 10*time.Second, func() error {
		if !e.get(s.frontend, s.apiIP) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})

	e.stopDaemon(syscall.SIGTERM)
	e.writePolicy("zz-big.hcl", bigAPIPolicy())
	e.startDaemon()
	st := e.status()
	if !bigRejected(st.LastPolicyError) || st.Policies != 3 {
		t.Fatalf("started with a set too big for the maps: %d policies, error %s", st.Policies, dump(st.LastPolicyError))
	}
	// The revision counts the sets accepted: the saved one only.
	if st.PolicyRevision != 1 {
		t.Errorf("started with a set too big for the maps: revision %d, want 1 (the last good set)", st.PolicyRevision)
	}
	s.check(t, e, "started with a set too big for the maps")
	s.checkNewAPI(t, e, "the last good set enforced at start")
	if b, err := os.ReadFile(lastGood); err != nil || strings.Contains(string(b), "api-big") {
		t.Errorf("last good set after a start with a set too big: %v, %s", err, b)
	}

	// No last good set saved: rejected all the same; the policy maps stay
	// as the previous daemon wrote them (the shop's set).
	e.stopDaemon(syscall.SIGTERM)
	if err := os.Remove(lastGood); err != nil {
		t.Fatal(err)
	}
	e.startDaemon()
	st = e.status()
	if !bigRejected(st.LastPolicyError) || st.Policies != 0 {
		t.Fatalf("started with a set too big and no last good set: %d policies, error %s", st.Policies, dump(st.LastPolicyError))
	}
	if st.PolicyRevision != 0 {
		t.Errorf("started with a set too big and no last good set: revision %d, want 0 (no set accepted)", st.PolicyRevision)
	}
	if _, err := os.Stat(lastGood); err == nil {
		t.Errorf("a set that does not fit was saved as the last good set")
	}
	s.check(t, e, "started with a set too big and no last good set")

	// The directory fixed, its set is enforced and saved.
	rev := st.PolicyRevision
	if err := os.Remove(filepath.Join(e.dir, "policies", "zz-big.hcl")); err != nil {
		t.Fatal(err)
	}
	if st := e.waitRevision(rev, false); st.Policies != 3 || st.PolicyRevision != 1 {
		t.Errorf("after removing the big file: %d policies, revision %d (want 3, 1)", st.Policies, st.PolicyRevision)
	}
	s.check(t, e, "after removing the big file")
	e.eventually("last good set saved again", 10*time.Second, func() error {
		_, err := os.Stat(lastGood)
		return err
	})
}

// When at start neither the directory's set nor the last good one saved
// fits the maps, the directory's set is kept (decision: it is what the
// user wants), so nothing was rejected: no error in status, and
// membrane_policy_load_errors_total does not count one (it did: the saved
// set was tried through the rejection path). The revision is 1: one set
// accepted.
func TestPolicySetAndLastGoodBothTooBigAtStartupIsKept(t *testing.T) {
	metrics := freePort(t)
	e := newEnv(t, envOpts{metrics: metrics, extraConfig: "maps {\n  policy_entries = 64\n}\n"})
	startShop(e)
	lastGood := filepath.Join(e.dir, "state", "last-good-policies.json")
	e.eventually("last good set saved", 10*time.Second, func() error {
		_, err := os.Stat(lastGood)
		return err
	})
	e.stopDaemon(syscall.SIGTERM)
	// The saved set gets the big file too (as if the maps were larger
	// when it was accepted).
	e.writePolicy("zz-big.hcl", bigAPIPolicy())
	b, err := os.ReadFile(lastGood)
	if err != nil {
		t.Fatal(err)
	}
	var lg struct {
		Saved time.Time `json:"saved"`
		Files []struct {
			Name    string `json:"name"`
			Content string `json:"content"`
		} `json:"files"`
	}
	if err := json.Unmarshal(b, &lg); err != nil || len(lg.Files) != 1 {
		t.Fatalf("last good set %s: %v", b, err)
	}
	big, err := os.ReadFile(filepath.Join(e.dir, "policies", "zz-big.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	lg.Files = append(lg.Files, struct {
		Name    string `json:"name"`
		Content string `json:"content"`
	}{filepath.Join(filepath.Dir(lg.Files[0].Name), "zz-big.hcl"), string(big)})
	if b, err = json.Marshal(lg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lastGood, b, 0o600); err != nil {
		t.Fatal(err)
	}

	e.startDaemon()
	st := e.status()
	if st.LastPolicyError != nil || st.Policies != 4 || st.PolicyRevision != 1 {
		t.Errorf("started with a set and a last good set both too big: %d policies, revision %d, error %s; want 4, 1, none",
			st.Policies, st.PolicyRevision, dump(st.LastPolicyError))
	}
	if v, ok := scrape(t, metrics, "membrane_policy_load_errors_total"); !ok || v != 0 {
		t.Errorf("membrane_policy_load_errors_total = %v (%v), want 0: no set was rejected", v, ok)
	}
	if v, _ := scrape(t, metrics, "membrane_policy_load_failing"); v != 0 {
		t.Errorf("membrane_policy_load_failing = %v, want 0", v)
	}
	if v, _ := scrape(t, metrics, "membrane_policy_revision"); v != 1 {
		t.Errorf("membrane_policy_revision = %v, want 1", v)
	}
	if v, _ := scrape(t, metrics, "membrane_policies"); v != 4 {
		t.Errorf("membrane_policies = %v, want 4", v)
	}
}

// A container whose identity's policy cannot be written (its labels put
// it under more rules than maps.policy_entries holds) is not enforced
// under an identity without rules, which would let everything in: it stays
// identity init (dropped) and status says why, until its policy fits.
func TestEndpointWhosePolicyCannotBeWrittenIsHeldBack(t *testing.T) {
	e := newEnv(t, envOpts{extraConfig: "maps {\n  policy_entries = 64\n}\n"})
	s := startShop(e)
	e.writePolicy("wide.hcl", `
policy "wide" {
  selector = "tier=wide,e2e=SFX"
  ingress {
    from_endpoints = ["compose.service=frontend,e2e=SFX"]
    ports          = `+manyPorts(20001, 70)+`
  }
}
`)
	e.waitRevision(e.status().PolicyRevision, false)
	wide := e.server("wide", "app=api", "tier=wide")
	ip := e.ip(wide)
	e.eventually("endpoint known", 20*time.Second, func() error {
		_, err := e.client.Endpoint(context.Background(), wide)
		return err
	})
	time.Sleep(500 * time.Millisecond)
	for _, from := range []string{s.frontend, s.db} {
		if e.get(from, ip) {
			t.Errorf("%s reached a container whose policy is not written", from)
		}
	}
	e.waitHeld(wide)
	// The map full names the setting to raise as membrane.hcl spells it.
	if p := strings.Join(e.status().Errors, "\n"); !strings.Contains(p, "maps.policy_entries is 64") {
		t.Errorf("problems %q do not name maps.policy_entries", p)
	}
	s.check(t, e, "with an endpoint held back")

	// Its policy fits again: it is enforced by it.
	os.Remove(filepath.Join(e.dir, "policies", "wide.hcl"))
	e.endpoint(wide)
	e.eventually("frontend reaches the api once its policy is written", 10*time.Second, func() error {
		if !e.get(s.frontend, ip) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})
	if e.get(s.db, ip) {
		t.Error("db reached the api once its policy was written")
	}
}

// policy_dir naming a file, not a directory, is reported: the daemon used
// to load the file once and then never see an edit of it (the watch waits
// for a directory), broken or not, with nothing in status.
func TestPolicyDirThatIsAFileIsReported(t *testing.T) {
	e := newEnv(t, envOpts{})
	file := filepath.Join(e.dir, "policies.hcl")
	if err := os.WriteFile(file, []byte(strings.ReplaceAll(shopPolicies, "SFX", e.sfx)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	dirLine := fmt.Sprintf("policy_dir      = %q", filepath.Join(e.dir, "policies"))
	if !strings.Contains(string(cfg), dirLine) {
		t.Fatalf("config has no %s:\n%s", dirLine, cfg)
	}
	cfg = []byte(strings.Replace(string(cfg), dirLine, fmt.Sprintf("policy_dir      = %q", file), 1))
	if err := os.WriteFile(e.cfgPath, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	e.startDaemon()
	st := e.status()
	pe := st.LastPolicyError
	if pe == nil || len(pe.Diagnostics) != 1 || pe.Diagnostics[0].File != file || !strings.Contains(pe.Diagnostics[0].Summary, "not a directory") {
		t.Fatalf("policy_dir is a file: %d policies, error %s", st.Policies, dump(pe))
	}
}

// A container cannot take another's identity, and so its rules, with a
// label value that prints like several labels: {a: "x,app=client"} is not
// {a: "x", app: "client"}.
func TestCraftedLabelValueDoesNotShareAnIdentity(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writePolicy("api.hcl", `
policy "api" {
  selector = "app=api,e2e=SFX"
  ingress {
    from_endpoints = ["app=client,e2e=SFX"]
    ports          = ["8080/tcp"]
  }
}
`)
	e.startDaemon()
	api := e.server("api", "app=api")
	client := e.idle("client", "a=x", "app=client")
	// docker run --label 'a=x,app=client': key "a", value "x,app=client".
	crafted := e.idle("crafted", "a=x,app=client")
	apiIP := e.ip(api)
	e.endpoint(api)
	cl, cr := e.endpoint(client), e.endpoint(crafted)
	if cl.Identity == cr.Identity {
		t.Errorf("%v and %v share identity %d", cl.Labels, cr.Labels, cl.Identity)
	}
	e.eventually("client reaches api", 10*time.Second, func() error {
		if !e.get(client, apiIP) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})
	if e.get(crafted, apiIP) {
		t.Error("a container labelled a=\"x,app=client\" reached the api that only app=client may reach")
	}
}

// SIGHUP, the usual "reload", does not stop membraned (its default
// action, which systemd would count a clean exit and not restart): it
// reloads the policies and reports a configuration file that the next
// start would refuse, with its position, while enforcement goes on.
func TestHangupReloadsAndReportsABrokenConfig(t *testing.T) {
	e := newEnv(t, envOpts{})
	s := startShop(e)
	rev := e.status().PolicyRevision
	cfg, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Count(string(cfg), "\n")
	if err := os.WriteFile(e.cfgPath, append(cfg, "enforcement = \"sometimes\"\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(e.cfgPath, cfg, 0o644) }) // for the cleanup's config.Load
	if err := e.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	e.waitRevision(rev, false)
	want := fmt.Sprintf("%s:%d:1: error: invalid enforcement", e.cfgPath, lines+1)
	e.eventually("status reports the broken configuration", 5*time.Second, func() error {
		if p := strings.Join(e.status().Errors, "\n"); !strings.Contains(p, want) {
			return fmt.Errorf("problems %q lack %q", p, want)
		}
		return nil
	})
	e.eventually("frontend reaches api", 10*time.Second, func() error {
		if !e.get(s.frontend, s.apiIP) {
			return os.ErrDeadlineExceeded
		}
		return nil
	})
	s.check(t, e, "after SIGHUP with a broken configuration")
	// Fixed, the problem goes.
	if err := os.WriteFile(e.cfgPath, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	e.cmd.Process.Signal(syscall.SIGHUP)
	e.eventually("the configuration problem goes", 5*time.Second, func() error {
		if p := strings.Join(e.status().Errors, "\n"); strings.Contains(p, "invalid enforcement") {
			return fmt.Errorf("problems %q", p)
		}
		return nil
	})
}

// A container with NET_ADMIN can put any address on its interface: another
// container's, or the host's own on its bridge (the gateway, the source of
// the host's connections into the network). Such an address is not the
// container's: Docker did not give it one. Once the daemon looks at the
// container again (any event of it: a rename here), the addresses it
// claims must not move to its identity, where the host's connections to db
// would be judged as coming from it, and db's own traffic would be taken
// for a stranger's (not-addressed, spoofed-source).
func TestAddressAContainerAddsItselfIsNotItsOwn(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writePolicy("db.hcl", `
policy "db" {
  selector = "app=db,e2e=SFX"
  ingress {
    from_endpoints = ["app=api,e2e=SFX"]
    from_entities  = ["host"]
    ports          = ["8080/tcp"]
  }
}
`)
	e.startDaemon()
	db, api := e.server("db", "app=db"), e.idle("api", "app=api")
	mallory := e.idle("mallory", "app=mallory")
	mallory2 := e.run("mallory2", []string{"app=mallory"}, "sleep 600", "--cap-add", "NET_ADMIN")
	for _, c := range []string{db, api, mallory, mallory2} {
		e.endpoint(c)
	}
	dbIP := e.ip(db)
	gw := e.docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", e.network)
	hostGet := func() bool {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(dbIP, "8080"), time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		fmt.Fprint(c, "GET / HTTP/1.0\r\n\r\n")
		b, _ := io.ReadAll(c)
		return strings.HasSuffix(string(b), "ok\n")
	}
	e.eventually("api and the host reach db", 10*time.Second, func() error {
		if !e.get(api, dbIP) || !hostGet() {
			return os.ErrDeadlineExceeded
		}
		return nil
	})

	e.docker("exec", mallory2, "ip", "addr", "add", dbIP+"/32", "dev", "eth0")
	e.docker("exec", mallory2, "ip", "addr", "add", gw+"/32", "dev", "eth0")
	name := mallory2
	for i := range 4 {
		// Each rename makes the daemon read the container again.
		next := fmt.Sprintf("%s-%d", mallory2, i)
		e.docker("rename", name, next)
		name = next
		e.names = append(e.names, name)
		ep := e.endpoint(name)
		for _, a := range ep.Addresses {
			if a == dbIP || a == gw {
				t.Errorf("%s's endpoint has address %s, which it added itself: %v", name, a, ep.Addresses)
			}
		}
		if !e.get(api, dbIP) {
			t.Errorf("after rename %d: api -> db dropped", i)
		}
		if !hostGet() {
			t.Errorf("after rename %d: host -> db dropped", i)
		}
		if e.get(mallory, dbIP) {
			t.Errorf("after rename %d: mallory -> db allowed", i)
		}
	}
}

// TestRejectedSetWithNoGoodOneDoesNotClaimOne: a daemon whose first policy
// set is invalid, with none saved, enforces no set of its own: `membrane
// status` says so instead of "the last good set stays enforced"; once a set
// was accepted, a rejected one does keep it.
func TestRejectedSetWithNoGoodOneDoesNotClaimOne(t *testing.T) {
	e := newEnv(t, envOpts{})
	bad := "policy \"a\" {\n  selector = \"app=a\"\n  ingres {}\n}\n"
	e.writePolicy("a.hcl", bad)
	e.startDaemon()
	st := e.waitRevision(0, true)
	if st.PolicyRevision != 0 || strings.Contains(st.LastPolicyError.Message, "last good set") || !strings.Contains(st.LastPolicyError.Message, "no policy set") {
		t.Errorf("first set rejected, none saved: revision %d, message %q; want revision 0 and a message saying no set is loaded", st.PolicyRevision, st.LastPolicyError.Message)
	}
	e.writePolicy("a.hcl", "policy \"a\" {\n  selector = \"app=a\"\n}\n")
	e.waitRevision(0, false)
	e.writePolicy("a.hcl", bad)
	e.eventually("the second rejection", 10*time.Second, func() error {
		if s := e.status(); s.LastPolicyError == nil || !strings.Contains(s.LastPolicyError.Message, "the last good set stays enforced") {
			return fmt.Errorf("error %+v", s.LastPolicyError)
		}
		return nil
	})
}
