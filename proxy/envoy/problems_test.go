package envoy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// An ADS client stands in for Envoy (none runs on this machine): it NACKs
// the listeners of a snapshot as Envoy does a listener it cannot build.
// Envoy then keeps the listeners it had; the engine must say so (membrane
// status lists Problems) until a later snapshot is ACKed.
func TestRejectedConfigurationIsReported(t *testing.T) {
	sc := scenarios()
	e, cc := xdsOnly(t, sc["ingress-only"])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := sotw.NewADSClient(ctx, &core.Node{Id: NodeID}, resource.ListenerType)
	if err := c.InitConnect(cc); err != nil {
		t.Fatal(err)
	}
	// Version 1 is accepted.
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(); err != nil {
		t.Fatal(err)
	}
	if err := e.Update(sc["both-ends"]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	const why = "Error adding/updating listener(s) membrane_proxy: Invalid regex: missing )"
	if err := c.Nack(why); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the NACK to be reported", func() bool { return len(e.Problems()) > 0 })
	if got := rejectedGauge(t, e); got != 1 {
		t.Errorf("membrane_proxy_envoy_config_rejected = %v after a NACK of the listeners, want 1", got)
	}
	ps := e.Problems()
	if len(ps) != 1 || !strings.Contains(ps[0], why) || !strings.Contains(ps[0], "listeners") || !strings.Contains(ps[0], "version 1") {
		t.Fatalf("Problems() = %q, want one line naming the listeners, Envoy's error and the version it keeps (1)", ps)
	}
	// The next snapshot is accepted: the problem is gone.
	if err := e.Update(sc["ingress-only"]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ACK to clear the problem", func() bool { return len(e.Problems()) == 0 })
	if got := rejectedGauge(t, e); got != 0 {
		t.Errorf("membrane_proxy_envoy_config_rejected = %v after the ACK, want 0", got)
	}
}

// rejectedGauge reads membrane_proxy_envoy_config_rejected from the
// engine's collectors.
func rejectedGauge(t *testing.T, e *Engine) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(e.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "membrane_proxy_envoy_config_rejected" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no membrane_proxy_envoy_config_rejected")
	return 0
}

// An Envoy that exits at once, every time, is restarted with backoff, and
// the engine says so while it does; once an Envoy serves, nothing is
// reported.
func TestEnvoyExitingInALoopIsReported(t *testing.T) {
	e := fakeEnvoyEngine(t, "1 2") // starts 1 and 2 exit at once; 3 serves
	// The second start follows the first exit; no Envoy has served yet
	// (the third is the first that can), so the exit is a problem.
	waitFor(t, "the first exit", func() bool { return e.sup.Starts() >= 2 })
	ps := e.Problems()
	if len(ps) != 1 || !strings.Contains(ps[0], "envoy exited") || !strings.Contains(ps[0], "exit status 3") ||
		!strings.Contains(ps[0], "error initializing config") {
		t.Fatalf("Problems() after Envoy exited = %q, want one line saying it exits (exit status 3) and why, as Envoy said it", ps)
	}
	waitFor(t, "the third Envoy to serve and the problem to clear", func() bool { return len(e.Problems()) == 0 })
	if got := e.sup.Starts(); got != 3 {
		t.Fatalf("no problem reported after %d starts, want 3 (the first to serve)", got)
	}
}

// A process that never opens its admin socket (a wrong binary, an Envoy
// stuck before it serves) is reported once it has had its grace.
func TestEnvoyNeverServingIsReported(t *testing.T) {
	dir := t.TempDir()
	s := &Supervisor{Path: "/bin/sleep", Args: []string{"60"}, AdminSocket: filepath.Join(dir, "admin.sock"),
		HealthInterval: 20 * time.Millisecond, NotReadyGrace: 200 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the stand-in to start", func() bool { return s.Starts() == 1 })
	waitFor(t, "a process without an admin socket to be reported", func() bool { return s.Problem() != "" })
	if p := s.Problem(); !strings.Contains(p, "has not answered /ready") || !strings.Contains(p, s.AdminSocket) {
		t.Fatalf("Problem() = %q, want it to say the admin socket %s does not answer", p, s.AdminSocket)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A binary that cannot be started (removed or half-written by a package
// upgrade at the moment Envoy exited) is tried again with backoff and
// reported meanwhile; the supervisor does not give up for good.
func TestSupervisorRetriesAnEnvoyThatCannotStart(t *testing.T) {
	dir := t.TempDir()
	exe, p := standIn(t, dir)
	bin := filepath.Join(dir, "envoy") // not there yet
	s := &Supervisor{Path: bin, Args: []string{"-c", p.Bootstrap}, AdminSocket: p.AdminSocket,
		HealthInterval: 20 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the failed start to be reported", func() bool { return s.Problem() != "" })
	if p := s.Problem(); !strings.Contains(p, bin) {
		t.Fatalf("Problem() = %q, want it to name the binary that could not start", p)
	}
	select {
	case err := <-done:
		t.Fatalf("the supervisor gave up after a failed start: %v", err)
	default:
	}
	if err := os.Symlink(exe, bin); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the binary, once there, to be started and serve", func() bool { return s.Starts() == 1 && s.Problem() == "" })
}
