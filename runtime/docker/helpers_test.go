package docker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/runtime/endpoint"
)

// testLabel is put on every container a test makes, so the test counts only
// its own (other areas' tests share this dockerd).
const testLabel = "membrane.test.runtime"

// collector records a source's events and the state they add up to.
type collector struct {
	mu     sync.Mutex
	evs    []endpoint.Event
	state  map[string]endpoint.Endpoint
	notify chan struct{}
}

func startSource(t *testing.T) (*Source, *collector) {
	t.Helper()
	src := New(Config{
		Logger:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		MinBackoff: 50 * time.Millisecond,
		MaxBackoff: time.Second,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := src.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	c := &collector{state: map[string]endpoint.Endpoint{}, notify: make(chan struct{}, 1)}
	cdone := make(chan struct{})
	go func() {
		defer close(cdone)
		for ev := range src.Events() {
			c.mu.Lock()
			c.evs = append(c.evs, ev)
			if ev.Type == endpoint.Removed {
				delete(c.state, ev.Endpoint.ID)
			} else {
				c.state[ev.Endpoint.ID] = ev.Endpoint
			}
			c.mu.Unlock()
			select {
			case c.notify <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done; <-cdone })
	select {
	case <-src.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("source did not sync within 30s")
	}
	return src, c
}

// waitFor waits until cond holds for the collected state.
func (c *collector) waitFor(t *testing.T, what string, cond func(state map[string]endpoint.Endpoint) bool) {
	t.Helper()
	deadline := time.After(120 * time.Second) // long: a colleague's test may restart the shared dockerd
	for {
		c.mu.Lock()
		ok := cond(c.state)
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-c.notify:
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("timed out waiting for %s; state: %s", what, dumpState(c.state))
		}
	}
}

func (c *collector) events() []endpoint.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]endpoint.Event(nil), c.evs...)
}

func dumpState(state map[string]endpoint.Endpoint) string {
	var b strings.Builder
	for id, ep := range state {
		var names []string
		for _, c := range ep.Containers {
			names = append(names, c.Name)
		}
		fmt.Fprintf(&b, "\n  %.12s %s %v itfs=%d", id, ep.NetworkMode, names, len(ep.Interfaces))
	}
	return b.String()
}

// byName finds the endpoint that holds container name.
func byName(state map[string]endpoint.Endpoint, name string) (endpoint.Endpoint, bool) {
	for _, ep := range state {
		for _, c := range ep.Containers {
			if c.Name == name {
				return ep, true
			}
		}
	}
	return endpoint.Endpoint{}, false
}

func docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// testRun is one test's unique label value and name prefix, with cleanup of
// every container carrying the label.
func testRun(t *testing.T) (prefix, label string) {
	t.Helper()
	testenv.BusyboxImage(t)
	suffix := testenv.RandomSuffix(6)
	prefix = "rt-" + suffix
	label = testLabel + "=" + suffix
	t.Cleanup(func() {
		out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label="+label).Output()
		if ids := strings.Fields(string(out)); len(ids) > 0 {
			_ = exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).Run()
		}
	})
	return prefix, label
}

func dockerNetwork(t *testing.T, name string) string {
	t.Helper()
	id := docker(t, "network", "create", "--label", testLabel+"=1", name)
	t.Cleanup(func() { _ = exec.Command("docker", "network", "rm", name).Run() })
	return id
}
