package daemon

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
)

// An endpoint whose identity cannot be allocated (here: the identity store
// cannot be written) is judged as init, and with unknown_endpoint =
// "allow" its traffic passes its own veth. Its peers must judge it as init
// too: its address used to have no ipcache entry (world), so a peer's rule
// for the world admitted it, and one for init did not (or identity 0 once
// the ipcache was written again). Once the store can be written, the
// allocation is retried and the endpoint gets its identity.
func TestEndpointWithoutIdentityIsInitToItsPeers(t *testing.T) {
	bridge, _ := dockerNet(t, 0)
	network := strings.Replace(bridge, "rlb", "rl-", 1)
	img := testenv.BusyboxImage(t)
	run := func(name string, args ...string) {
		t.Helper()
		out, err := exec.Command("docker", append([]string{"run", "-d", "--name", name, "--network", network}, args...)...).CombinedOutput()
		t.Cleanup(func() { exec.Command("docker", "rm", "-f", name).Run() })
		if err != nil {
			t.Fatalf("docker run %s: %v: %s", name, err, out)
		}
	}
	db, client := network+"-db", network+"-client"
	run(db, "--label", "app=db", img, "sh", "-c", "nc -ll -p 80 -e echo ok & nc -ll -p 81 -e echo ok & wait")
	out, err := exec.Command("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", db).Output()
	if err != nil {
		t.Fatal(err)
	}
	dbIP := strings.TrimSpace(string(out))

	// No periodic resync during the test: the retry is asked for.
	d := newTestDaemon(t, testDaemonOpts{docker: true, bridges: []string{bridge}, extra: `
unknown_endpoint = "allow"
resync_interval  = "1h"
`})
	d.writePolicy("db.hcl", `
policy "db" {
  selector = "app=db"
  ingress {
    from_entities = ["world"]
    ports         = ["80/tcp"]
  }
  ingress {
    from_entities = ["init"]
    ports         = ["81/tcp"]
  }
}
`)
	d.start(nil, nil)
	d.waitStatus("db enforced", 30*time.Second, func(st api.Status) bool { return st.Reconciled && st.Endpoints == 1 })

	// The identity store's directory becomes read-only: a new label set
	// cannot be saved, so it gets no identity.
	state := d.cfg.StateDir
	for _, args := range [][]string{{"--bind", state, state}, {"-o", "remount,bind,ro", state}} {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Fatalf("mount %v: %v: %s", args, err, out)
		}
	}
	mounted := true
	unmount := func() {
		if mounted {
			if out, err := exec.Command("umount", state).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", state, err, out)
			}
			mounted = false
		}
	}
	t.Cleanup(unmount)
	if f, err := os.CreateTemp(state, "probe-"); err == nil {
		f.Close()
		os.Remove(f.Name())
		t.Fatal("the state directory is still writable")
	}

	run(client, "--label", "app=client", img, "sleep", "600")
	d.waitStatus("the client's identity allocation failed", 30*time.Second, func(st api.Status) bool {
		return st.Endpoints == 2 && slices.ContainsFunc(st.Errors, func(e string) bool { return strings.Contains(e, "read-only file system") })
	})
	connect := func(port string) bool {
		out, _ := exec.Command("docker", "exec", client, "nc", "-w", "2", dbIP, port).Output()
		return strings.TrimSpace(string(out)) == "ok"
	}
	// The rule for init admits it (polling: the daemon writes the ipcache
	// after it reported the endpoint in status)...
	for deadline := time.Now().Add(20 * time.Second); !connect("81"); {
		if time.Now().After(deadline) {
			ep, err := d.client.Endpoint(context.Background(), client)
			t.Fatalf("the client without an identity is not admitted by db's rule for init (endpoint %+v, %v)", ep, err)
		}
	}
	if ep, err := d.client.Endpoint(context.Background(), client); err != nil || ep.Identity != uint32(policies.IdentityInit) {
		t.Errorf("the client without an identity: endpoint %+v, %v; want identity init (5)", ep, err)
	}
	// ...and the rule for the world does not.
	if connect("80") {
		t.Error("db's rule for the world admitted the client without an identity")
	}

	// The store can be written again: the next resync allocates.
	unmount()
	if _, err := d.client.Resync(context.Background()); err != nil {
		t.Fatal(err)
	}
	d.waitStatus("the client's identity allocated", 30*time.Second, func(api.Status) bool {
		ep, err := d.client.Endpoint(context.Background(), client)
		return err == nil && ep.Identity >= uint32(policies.FirstAllocated)
	})
	st := d.waitStatus("status", time.Second, func(api.Status) bool { return true })
	if slices.ContainsFunc(st.Errors, func(e string) bool { return strings.Contains(e, "read-only file system") }) {
		t.Errorf("the allocation problem is still reported: %q", st.Errors)
	}
	if connect("81") {
		t.Error("db's rule for init admitted the client after it got its identity")
	}
}
