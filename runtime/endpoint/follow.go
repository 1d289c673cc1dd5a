package endpoint

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Follower is how a runtime source (runtime/docker, runtime/containerd)
// follows its runtime: the reconnect loop and, per connection, the session
// (subscribe first, resync in full, then refresh each container its events
// name, in order, through a Dispatcher, plus the periodic recheck). Both
// runtimes follow the same protocol, so it lives here once; a source fills in
// the runtime-specific parts. M is the runtime's event message type.
type Follower[M any] struct {
	// Queue delivers the source's events; Run runs it and stops it (closing
	// its Events) when Run returns.
	Queue *Queue[Event]
	// Log gets the reconnect warnings; Peer names the runtime in them
	// ("dockerd", "containerd").
	Log  *slog.Logger
	Peer string
	// MinBackoff and MaxBackoff bound the reconnect delay.
	MinBackoff, MaxBackoff time.Duration
	// Workers is how many containers are refreshed at once.
	Workers int
	// RecheckInterval is how often Recheck's containers are refreshed again
	// (0 or negative: never).
	RecheckInterval time.Duration
	// Stream names the event stream in errors ("events stream").
	Stream string

	// Subscribe checks that the runtime answers and opens its event stream.
	// It is called before Resync, so nothing that happens during the
	// resync is missed.
	Subscribe func(ctx context.Context) (<-chan M, <-chan error, error)
	// Key returns the container key an event concerns ("" to ignore it).
	Key func(M) string
	// Resync lists every container and makes the table hold exactly their
	// endpoints.
	Resync func(ctx context.Context) error
	// Refresh re-reads one container and reports what changed; an error
	// means the runtime is unreachable (the session ends), except ErrRetry:
	// the container could not be read whole (its network namespace), what
	// was known of it stays reported, and it is refreshed again after a
	// backoff (RetryMin, doubling up to RetryMax).
	Refresh func(ctx context.Context, key string) error
	// Stale returns the keys that the last Resync could not read whole:
	// they are refreshed again after RetryMin. Nil: none.
	Stale func() []string
	// RetryMin and RetryMax bound the retry delay (defaults 1s, 30s).
	RetryMin, RetryMax time.Duration
	// Recheck returns the keys to push through the dispatcher on every
	// recheck tick: the listed and the known containers.
	Recheck func(ctx context.Context) ([]string, error)
	// Progress is marked synced after every successful resync (it closes
	// Synced once) and counts every session after the first.
	Progress *Progress

	// push is the running session's Dispatcher.Push (nil between
	// sessions), for Nudge.
	pushMu sync.Mutex
	push   func(key string)
}

// Nudge has the container key read again, through the same ordered
// per-container queue as its own events, when a session runs (else the
// next session's resync reads it anyway). It never blocks. For a change no
// runtime event announces: an interface that a CNI plugin puts into a
// container's namespace after it started (Nomad's bridge networking).
func (f *Follower[M]) Nudge(key string) {
	f.pushMu.Lock()
	defer f.pushMu.Unlock()
	if f.push != nil {
		f.push(key)
	}
}

// Progress is what a source's users see of its Follower: Synced closes
// after the first full resync, Reconnects counts the sessions after the
// first, and Connection says whether the runtime is followed now. A source
// makes one in New, so all work before Run.
type Progress struct {
	once   sync.Once
	synced chan struct{}

	mu         sync.Mutex
	reconnects int
	conn       Connection
	changed    chan struct{}
}

// Connection is a source's link to its runtime as its Follower last saw it.
type Connection struct {
	// Up: the last session resynced and follows the runtime's events.
	Up bool
	// Since is when the connection came up (Up), or when it was lost.
	Since time.Time
	// Err says why it was lost, as last tried (Up false).
	Err string
	// Resyncs counts the sessions that resynced, the first one included:
	// Resyncs-1 times, the runtime was lost and caught up with again.
	Resyncs int
}

// NewProgress returns a Progress that has not synced.
func NewProgress() *Progress {
	return &Progress{synced: make(chan struct{}), changed: make(chan struct{})}
}

// Synced is closed after the first full resync.
func (p *Progress) Synced() <-chan struct{} { return p.synced }

// Reconnects counts the sessions after the first.
func (p *Progress) Reconnects() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reconnects
}

// Connection returns the connection's state now.
func (p *Progress) Connection() Connection {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conn
}

// Changed is closed at the next change of Connection.
func (p *Progress) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// changedLocked wakes the waiters of Changed.
func (p *Progress) changedLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Progress) resynced() {
	p.mu.Lock()
	p.conn = Connection{Up: true, Since: time.Now(), Resyncs: p.conn.Resyncs + 1}
	p.changedLocked()
	p.mu.Unlock()
	p.once.Do(func() { close(p.synced) })
}

// lost records a session that ended, or could not start, with err.
func (p *Progress) lost(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	msg := "unknown error"
	if err != nil {
		msg = err.Error()
	}
	if !p.conn.Up && p.conn.Err == msg {
		return
	}
	if p.conn.Up || p.conn.Since.IsZero() {
		p.conn.Since = time.Now()
	}
	p.conn.Up, p.conn.Err = false, msg
	p.changedLocked()
}

func (p *Progress) reconnected() {
	p.mu.Lock()
	p.reconnects++
	p.mu.Unlock()
}

// ErrRetry says, wrapped in a Refresh error, that the container could not
// be read whole for a reason that may pass (its network namespace could
// not be read, though it exists): what was known of it stays reported and
// it is read again after a backoff.
var ErrRetry = errors.New("read again later")

// Run follows the runtime, session after session, until ctx is done, and
// returns nil then. A session that lasted over 10 s resets the backoff.
func (f *Follower[M]) Run(ctx context.Context) error {
	qctx, qcancel := context.WithCancel(context.Background())
	qdone := make(chan struct{})
	go func() { f.Queue.Run(qctx); close(qdone) }()
	// Not drained before Events closes: cancellation is the consumer's own
	// request to stop.
	defer func() { qcancel(); <-qdone }()

	backoff := f.MinBackoff
	for first := true; ; first = false {
		if !first {
			f.Progress.reconnected()
		}
		start := time.Now()
		err := f.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			backoff = f.MinBackoff
		}
		f.Progress.lost(err)
		f.Log.Warn("lost "+f.Peer+"; reconnecting", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, f.MaxBackoff)
	}
}

// session is one connection: subscribe, resync, follow. It returns when the
// stream breaks, a refresh finds the runtime unreachable, or ctx is done.
func (f *Follower[M]) session(ctx context.Context) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	msgs, errs, err := f.Subscribe(sctx)
	if err != nil {
		return err
	}
	retryMin, retryMax := cmp.Or(f.RetryMin, time.Second), cmp.Or(f.RetryMax, 30*time.Second)
	var retryMu sync.Mutex
	retryDelay := map[string]time.Duration{}
	var d *Dispatcher
	retry := func(key string) {
		retryMu.Lock()
		delay := retryDelay[key]
		if delay == 0 {
			delay = retryMin
		}
		retryDelay[key] = min(2*delay, retryMax)
		retryMu.Unlock()
		// Push after Stop is a no-op: a timer outliving the session
		// does nothing.
		time.AfterFunc(delay, func() { d.Push(key) })
	}
	d = NewDispatcher(f.Workers, func(key string) error {
		err := f.Refresh(sctx, key)
		if errors.Is(err, ErrRetry) {
			f.Log.Warn("could not read a container whole; keeping what is known of it and reading it again", "container", key, "err", err)
			retry(key)
			return nil
		}
		if err == nil {
			retryMu.Lock()
			delete(retryDelay, key)
			retryMu.Unlock()
		}
		return err
	})
	defer func() { cancel(); d.Stop() }() // cancel first: in-flight refreshes must not outlive the session
	f.pushMu.Lock()
	f.push = d.Push
	f.pushMu.Unlock()
	defer func() {
		f.pushMu.Lock()
		f.push = nil
		f.pushMu.Unlock()
	}()

	// The reader never does slow work: the runtime drops events for readers
	// that fall behind, and Push never blocks.
	readErr := make(chan error, 1)
	go func() {
		for {
			select {
			case m := <-msgs:
				if key := f.Key(m); key != "" {
					d.Push(key)
				}
			case err := <-errs:
				if err == nil {
					err = errors.New(f.Stream + " closed")
				}
				readErr <- err
				return
			}
		}
	}()

	if err := f.Resync(sctx); err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	f.Progress.resynced()
	d.Start()
	if f.Stale != nil {
		for _, k := range f.Stale() {
			retry(k)
		}
	}
	var recheck <-chan time.Time
	if f.RecheckInterval > 0 {
		t := time.NewTicker(f.RecheckInterval)
		defer t.Stop()
		recheck = t.C
	}
	for {
		select {
		case err := <-readErr:
			return fmt.Errorf("%s: %w", f.Stream, err)
		case err := <-d.Failed():
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-recheck:
			// Through the dispatcher, so a recheck never races a
			// container's own events.
			keys, err := f.Recheck(sctx)
			if err != nil {
				return fmt.Errorf("recheck: %w", err)
			}
			for _, k := range keys {
				d.Push(k)
			}
		}
	}
}

// Parallel calls f(0) .. f(n-1), at most workers at once, and returns when
// all have returned (the sources read containers in parallel on a resync).
func Parallel(n, workers int, f func(i int)) {
	sem := make(chan struct{}, max(workers, 1))
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f(i)
		}()
	}
	wg.Wait()
}
