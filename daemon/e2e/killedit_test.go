package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
)

// TestDaemonKilledRestartsWithWhatChangedMeanwhile: membraned is killed
// (SIGKILL) with an allowed flow running; while it is down a container
// goes away and the policy directory is edited so that the flow's port
// is no longer allowed. The restarted daemon enforces the edited set,
// which cuts the flow at its next packet while a request the new set
// allows still passes, and leaves no pinned link of the veth that went.
func TestDaemonKilledRestartsWithWhatChangedMeanwhile(t *testing.T) {
	e := newEnv(t, envOpts{})
	const policy = `
policy "srv" {
  selector = "app=srv,e2e=SFX"
  ingress {
    from_endpoints = ["app=client,e2e=SFX"]
    ports          = [PORTS]
  }
}
`
	e.writePolicy("srv.hcl", strings.ReplaceAll(policy, "PORTS", `"8080/tcp", "9000/tcp"`))
	e.startDaemon()
	srv := e.server("srv", "app=srv")
	client := e.idle("client", "app=client")
	gone := e.idle("gone", "app=gone")
	e.endpoint(srv)
	e.endpoint(client)
	goneIfx := e.endpoint(gone).Interfaces[0].Ifindex
	links := func(ifx int) []string {
		m, _ := filepath.Glob(filepath.Join(e.pinDir, "links", fmt.Sprintf("*_%d_*", ifx)))
		return m
	}
	if len(links(goneIfx)) == 0 {
		t.Fatalf("no pinned link of gone's veth %d in %s/links", goneIfx, e.pinDir)
	}
	f := e.startFlow(client, srv)

	e.stopDaemon(syscall.SIGKILL)
	e.docker("rm", "-f", gone)
	e.writePolicy("srv.hcl", strings.ReplaceAll(policy, "PORTS", `"8080/tcp"`))
	if !f.flowing(500 * time.Millisecond) {
		t.Error("the allowed flow stopped while membraned was down")
	}

	e.startDaemon()
	if st := e.status(); st.LastPolicyError != nil {
		t.Errorf("restarted daemon: policy error %v", st.LastPolicyError)
	}
	e.eventually("the flow the edited set forbids is cut", 10*time.Second, func() error {
		for _, fl := range e.observe(api.ObserveFilter{Container: srv, Verdict: "dropped"}) {
			if fl.Dest.Port == 9000 {
				return nil
			}
		}
		return fmt.Errorf("no drop of the flow to port 9000 yet")
	})
	if !e.get(client, e.ip(srv)) {
		t.Error("client's request on 8080, which the edited set allows, failed")
	}
	if l := links(goneIfx); len(l) > 0 {
		t.Errorf("pinned links of the veth that went while membraned was down: %v", l)
	}
	if _, err := os.Stat(filepath.Join(e.pinDir, "links")); err != nil {
		t.Errorf("links pin directory: %v", err)
	}
}
