package runtimetest

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/linkwatch"
)

// Logger logs warnings and worse to stderr: what a source under test
// complains about shows in the test's output.
func Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// Collector records a source's events and the state they add up to.
type Collector struct {
	mu     sync.Mutex
	evs    []endpoint.Event
	state  map[string]endpoint.Endpoint
	notify chan struct{}
	wait   time.Duration
}

// StartSource runs src until the test ends, collects its events and waits
// (30 s at most) until it has synced. WaitFor gives up after wait.
func StartSource(t *testing.T, src endpoint.Source, wait time.Duration) *Collector {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := src.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	c := &Collector{state: map[string]endpoint.Endpoint{}, notify: make(chan struct{}, 1), wait: wait}
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
	return c
}

// WaitFor waits until cond holds for the collected state (cond runs with
// the collector locked: it must not keep the map).
func (c *Collector) WaitFor(t *testing.T, what string, cond func(state map[string]endpoint.Endpoint) bool) {
	t.Helper()
	deadline := time.After(c.wait)
	for {
		c.mu.Lock()
		ok := cond(c.state)
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-c.notify:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("timed out waiting for %s; state: %s", what, dumpState(c.state))
		}
	}
}

// State returns a copy of the collected state, by endpoint id.
func (c *Collector) State() map[string]endpoint.Endpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.state)
}

// Events returns the events so far, in order.
func (c *Collector) Events() []endpoint.Event {
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

// LinkCollector records a link watcher's events.
type LinkCollector struct {
	mu  sync.Mutex
	evs []linkwatch.Event
}

// StartLinkWatcher runs a link watcher with the resolvers until the test
// ends and waits (10 s at most) until it is ready.
func StartLinkWatcher(t testing.TB, resolvers ...linkwatch.Resolver) (*linkwatch.Watcher, *LinkCollector) {
	t.Helper()
	w, err := linkwatch.New(linkwatch.Config{Resolvers: resolvers})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	lc := &LinkCollector{}
	cdone := make(chan struct{})
	go func() {
		defer close(cdone)
		for ev := range w.Events() {
			lc.mu.Lock()
			lc.evs = append(lc.evs, ev)
			lc.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done; <-cdone })
	select {
	case <-w.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("link watcher not ready")
	}
	return w, lc
}

// Events returns the watcher's events so far, in order.
func (lc *LinkCollector) Events() []linkwatch.Event {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return append([]linkwatch.Event(nil), lc.evs...)
}

// Run runs a command and returns its combined output; a failure fails the
// test with that output.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
