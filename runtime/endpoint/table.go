package endpoint

import (
	"context"
	"sort"
	"sync"
	"time"
)

// Table holds the endpoints a source has reported and turns each new view of
// an endpoint into the event that tells a consumer about the difference. It is
// safe for concurrent use. Events go to the Queue given to NewTable in the
// order the Table produced them.
type Table struct {
	mu  sync.Mutex
	eps map[string]Endpoint
	out *Queue[Event]
	now func() time.Time
}

// NewTable returns an empty table that reports to out.
func NewTable(out *Queue[Event]) *Table {
	return &Table{eps: map[string]Endpoint{}, out: out, now: time.Now}
}

// Set records ep and reports Added (new id), Updated (changed) or nothing
// (identical to what was last reported). It reports whether it emitted.
func (t *Table) Set(ep Endpoint, resync bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.setLocked(ep, resync)
}

func (t *Table) setLocked(ep Endpoint, resync bool) bool {
	old, ok := t.eps[ep.ID]
	if ok && old.Equal(&ep) {
		return false
	}
	ep = ep.Clone()
	t.eps[ep.ID] = ep
	typ := Added
	if ok {
		typ = Updated
	}
	t.out.Push(Event{Type: typ, Endpoint: ep.Clone(), Time: t.now(), Resync: resync})
	return true
}

// Delete removes id and reports Removed when it was known.
func (t *Table) Delete(id string, resync bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.deleteLocked(id, resync)
}

func (t *Table) deleteLocked(id string, resync bool) bool {
	old, ok := t.eps[id]
	if !ok {
		return false
	}
	delete(t.eps, id)
	t.out.Push(Event{Type: Removed, Endpoint: old, Time: t.now(), Resync: resync})
	return true
}

// Replace makes the table hold exactly eps: Removed for every endpoint not in
// eps (stale after an outage), Added/Updated for new or changed ones, nothing
// for the unchanged. This is the full resync.
func (t *Table) Replace(eps []Endpoint) { t.replace(eps, true) }

// Converge is Replace for a source that recomputes all its endpoints after
// each runtime event: the same diff, reported as event-driven (Resync false).
func (t *Table) Converge(eps []Endpoint) { t.replace(eps, false) }

func (t *Table) replace(eps []Endpoint, resync bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	keep := make(map[string]bool, len(eps))
	for _, ep := range eps {
		keep[ep.ID] = true
	}
	for _, id := range t.idsLocked() {
		if !keep[id] {
			t.deleteLocked(id, resync)
		}
	}
	for _, ep := range eps {
		t.setLocked(ep, resync)
	}
}

func (t *Table) idsLocked() []string {
	ids := make([]string, 0, len(t.eps))
	for id := range t.eps {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Get returns the endpoint last reported under id.
func (t *Table) Get(id string) (Endpoint, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ep, ok := t.eps[id]
	if !ok {
		return Endpoint{}, false
	}
	return ep.Clone(), true
}

// Snapshot returns every endpoint, sorted by id.
func (t *Table) Snapshot() []Endpoint {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Endpoint, 0, len(t.eps))
	for _, id := range t.idsLocked() {
		out = append(out, t.eps[id].Clone())
	}
	return out
}

// FindByNetns returns the endpoint whose netns has inode ino.
func (t *Table) FindByNetns(ino uint64) (Endpoint, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ep := range t.eps {
		if ep.Netns.Inode == ino && ino != 0 {
			return ep.Clone(), true
		}
	}
	return Endpoint{}, false
}

// Queue is an unbounded FIFO between a source and its consumer. Push never
// blocks, so a slow consumer never stalls a runtime's event reader (Docker
// drops events for readers that fall behind, netlink overruns the socket);
// Run forwards the queued items to the channel that Events returns.
type Queue[T any] struct {
	mu     sync.Mutex
	items  []T
	notify chan struct{}
	out    chan T
}

// NewQueue returns an empty queue.
func NewQueue[T any]() *Queue[T] {
	return &Queue[T]{notify: make(chan struct{}, 1), out: make(chan T)}
}

// Push appends v.
func (q *Queue[T]) Push(v T) {
	q.mu.Lock()
	q.items = append(q.items, v)
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// Len is the number of items not yet taken by the consumer.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// Events is the consumer's channel. It is closed when Run returns.
func (q *Queue[T]) Events() <-chan T { return q.out }

// Run forwards items until ctx is done, then closes the Events channel.
func (q *Queue[T]) Run(ctx context.Context) {
	defer close(q.out)
	var zero T
	for {
		q.mu.Lock()
		var v T
		have := len(q.items) > 0
		if have {
			v = q.items[0]
			q.items[0] = zero
			q.items = q.items[1:]
		}
		q.mu.Unlock()
		if !have {
			select {
			case <-q.notify:
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case q.out <- v:
		case <-ctx.Done():
			return
		}
	}
}
