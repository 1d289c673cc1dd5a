package endpoint

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeRuntime is a runtime whose event stream the test drives.
type fakeRuntime struct {
	mu         sync.Mutex
	log        []string // "subscribe", "resync", "refresh KEY"
	msgs       chan string
	errs       chan error
	subscribed chan struct{}
}

func (r *fakeRuntime) note(s string) {
	r.mu.Lock()
	r.log = append(r.log, s)
	r.mu.Unlock()
}

func (r *fakeRuntime) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log)
}

// TestFollowerSessions: subscribe comes before the resync, Synced closes
// after it, every event's key is refreshed, a broken stream ends the session
// with the stream's name and a new session (subscribe, resync) follows, and
// cancellation ends Run with nil and closes Events.
func TestFollowerSessions(t *testing.T) {
	r := &fakeRuntime{subscribed: make(chan struct{}, 4)}
	var lastErr atomic.Value
	p := NewProgress()
	q := NewQueue[Event]()
	f := &Follower[string]{
		Queue: q, Log: slog.New(errHandler{&lastErr}), Peer: "fake",
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond,
		Workers: 2, Stream: "fake stream", Progress: p,
		Subscribe: func(ctx context.Context) (<-chan string, <-chan error, error) {
			r.note("subscribe")
			r.mu.Lock()
			r.msgs, r.errs = make(chan string), make(chan error, 1)
			msgs, errs := r.msgs, r.errs
			r.mu.Unlock()
			r.subscribed <- struct{}{}
			return msgs, errs, nil
		},
		Key:    func(m string) string { return m },
		Resync: func(context.Context) error { r.note("resync"); return nil },
		Refresh: func(_ context.Context, key string) error {
			r.note("refresh " + key)
			return nil
		},
		Recheck: func(context.Context) ([]string, error) { return nil, nil },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()

	<-r.subscribed
	select {
	case <-p.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("not synced")
	}
	r.mu.Lock()
	msgs, errs := r.msgs, r.errs
	r.mu.Unlock()
	msgs <- "" // ignored
	msgs <- "a"
	waitUntil(t, func() bool { return slices.Contains(r.calls(), "refresh a") })
	errs <- nil // the stream closed
	<-r.subscribed
	waitUntil(t, func() bool { return p.Reconnects() == 1 })
	if got, want := lastErr.Load(), "fake stream: fake stream closed"; got != want {
		t.Fatalf("session ended with %v, want %q", got, want)
	}
	waitUntil(t, func() bool { return len(r.calls()) >= 5 })
	if got, want := r.calls()[:5], []string{"subscribe", "resync", "refresh a", "subscribe", "resync"}; !slices.Equal(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, open := <-q.Events(); open {
		t.Fatal("Events not closed after Run returned")
	}
}

// TestFollowerSubscribeError: a runtime that does not answer is retried.
func TestFollowerSubscribeError(t *testing.T) {
	var tries atomic.Int32
	p := NewProgress()
	f := &Follower[string]{
		Queue: NewQueue[Event](), Log: slog.New(slog.DiscardHandler), Peer: "fake",
		MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, Workers: 1, Stream: "s", Progress: p,
		Subscribe: func(context.Context) (<-chan string, <-chan error, error) {
			tries.Add(1)
			return nil, nil, errors.New("down")
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	waitUntil(t, func() bool { return tries.Load() >= 3 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	select {
	case <-p.Synced():
		t.Fatal("synced without a resync")
	default:
	}
}

func TestParallel(t *testing.T) {
	var running, peak atomic.Int32
	seen := make([]bool, 20)
	Parallel(len(seen), 3, func(i int) {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(time.Millisecond)
		seen[i] = true
		running.Add(-1)
	})
	if slices.Contains(seen, false) || peak.Load() > 3 {
		t.Fatalf("seen %v, peak %d (max 3)", seen, peak.Load())
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// errHandler keeps the "err" of the last log record (the reconnect warning).
type errHandler struct{ last *atomic.Value }

func (h errHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h errHandler) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			h.last.Store(a.Value.Any().(error).Error())
		}
		return true
	})
	return nil
}
func (h errHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h errHandler) WithGroup(string) slog.Handler      { return h }

// TestProgressConnectionLostAndBack: Connection is up after a resync,
// down from the moment a session breaks (Since stays that moment while
// reconnecting fails, Err says the last failure), and up again after the
// next resync, with every change announced by Changed.
func TestProgressConnectionLostAndBack(t *testing.T) {
	var down atomic.Bool
	errs := make(chan chan error, 4)
	p := NewProgress()
	f := &Follower[string]{
		Queue: NewQueue[Event](), Log: slog.New(slog.DiscardHandler), Peer: "fake",
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		Workers: 1, Stream: "fake stream", Progress: p,
		Subscribe: func(ctx context.Context) (<-chan string, <-chan error, error) {
			if down.Load() {
				return nil, nil, errors.New("runtime down")
			}
			e := make(chan error, 1)
			errs <- e
			return make(chan string), e, nil
		},
		Key:     func(m string) string { return m },
		Resync:  func(context.Context) error { return nil },
		Refresh: func(context.Context, string) error { return nil },
		Recheck: func(context.Context) ([]string, error) { return nil, nil },
	}
	if c := p.Connection(); c.Up || c.Resyncs != 0 {
		t.Fatalf("before Run: %+v", c)
	}
	changed := p.Changed()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.Run(ctx)
	<-p.Synced()
	<-changed
	if c := p.Connection(); !c.Up || c.Resyncs != 1 {
		t.Fatalf("after the first resync: %+v", c)
	}
	changed = p.Changed()
	down.Store(true)
	(<-errs) <- errors.New("boom")
	<-changed
	lost := p.Connection()
	if lost.Up || lost.Since.IsZero() {
		t.Fatalf("after the stream broke: %+v", lost)
	}
	waitUntil(t, func() bool { return p.Connection().Err == "runtime down" })
	if c := p.Connection(); c.Up || !c.Since.Equal(lost.Since) || c.Resyncs != 1 {
		t.Fatalf("while reconnecting fails: %+v, lost at %v", c, lost.Since)
	}
	changed = p.Changed()
	down.Store(false)
	<-changed
	waitUntil(t, func() bool { return p.Connection().Up })
	if c := p.Connection(); c.Resyncs != 2 || c.Err != "" {
		t.Fatalf("back: %+v", c)
	}
}
