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
// is no longer allowed, and a second network goes with its container.
// The restarted daemon enforces the edited set, which cuts the flow at its
// next packet while a request the new set allows still passes, and leaves
// no pin of the veths and the bridge that went.
func TestDaemonKilledRestartsWithWhatChangedMeanwhile(t *testing.T) {
	e := newEnv(t, envOpts{networks: map[string][]string{"x": nil}})
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
	goneX := e.run("gonex", []string{"app=gone"}, "sleep 600", "--network", e.nets["x"])
	e.endpoint(srv)
	e.endpoint(client)
	goneIfx := e.endpoint(gone).Interfaces[0].Ifindex
	goneXIfx := e.endpoint(goneX).Interfaces[0].Ifindex
	b, err := os.ReadFile("/sys/class/net/mtx" + e.sfx + "/ifindex")
	if err != nil {
		t.Fatal(err)
	}
	bridgeX := strings.TrimSpace(string(b))
	links := func(ifx int) []string {
		m, _ := filepath.Glob(filepath.Join(e.pinDir, "links", fmt.Sprintf("*_%d_*", ifx)))
		return m
	}
	bridgePins := func() []string {
		m, _ := filepath.Glob(filepath.Join(e.pinDir, "bridges", "*_"+bridgeX))
		m2, _ := filepath.Glob(filepath.Join(e.pinDir, "bridges", "acceptlocal_"+bridgeX+"_*"))
		return append(m, m2...)
	}
	if len(links(goneIfx)) == 0 || len(links(goneXIfx)) == 0 || len(bridgePins()) == 0 {
		t.Fatalf("no pinned links of the veths %d, %d or of bridge %s in %s", goneIfx, goneXIfx, bridgeX, e.pinDir)
	}
	f := e.startFlow(client, srv)

	e.stopDaemon(syscall.SIGKILL)
	e.docker("rm", "-f", gone, goneX)
	e.docker("network", "rm", e.nets["x"])
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
	if l := append(links(goneIfx), links(goneXIfx)...); len(l) > 0 {
		t.Errorf("pinned links of the veths that went while membraned was down: %v", l)
	}
	if l := bridgePins(); len(l) > 0 {
		t.Errorf("pins of the bridge that went while membraned was down: %v", l)
	}
	if _, err := os.Stat(filepath.Join(e.pinDir, "links")); err != nil {
		t.Errorf("links pin directory: %v", err)
	}
}
