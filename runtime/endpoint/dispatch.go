package endpoint

import "sync"

// Dispatcher runs one refresh at a time per container, in the order the
// container's events arrived, with at most `workers` refreshes at once.
// Several events for a container that queue up while it is being refreshed
// collapse into one more refresh: each refresh reads the container's current
// state, so one read after the last event sees everything they announced.
type Dispatcher struct {
	mu      sync.Mutex
	pending map[string]bool // container has events not yet refreshed
	active  map[string]bool // a goroutine is draining the container
	order   []string        // containers with pending events, before start
	started bool
	stopped bool
	sem     chan struct{}
	wg      sync.WaitGroup
	refresh func(id string) error
	failed  chan error // first refresh error (runtime unreachable)
}

// NewDispatcher returns a stopped dispatcher that calls refresh with a
// container key (the sources use the container id, or namespace/id). A
// refresh error (the runtime is unreachable) stops the dispatcher and is
// delivered on Failed; the source then reconnects and resyncs.
func NewDispatcher(workers int, refresh func(key string) error) *Dispatcher {
	return &Dispatcher{
		pending: map[string]bool{},
		active:  map[string]bool{},
		sem:     make(chan struct{}, workers),
		refresh: refresh,
		failed:  make(chan error, 1),
	}
}

// Push never blocks: it is called by the events reader.
func (d *Dispatcher) Push(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	if !d.pending[id] {
		d.pending[id] = true
		if !d.started {
			d.order = append(d.order, id)
		}
	}
	if d.started && !d.active[id] {
		d.active[id] = true
		d.wg.Add(1)
		go d.drain(id)
	}
}

// Start begins processing (after the resync).
func (d *Dispatcher) Start() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.started = true
	for _, id := range d.order {
		if d.pending[id] && !d.active[id] {
			d.active[id] = true
			d.wg.Add(1)
			go d.drain(id)
		}
	}
	d.order = nil
}

func (d *Dispatcher) drain(id string) {
	defer d.wg.Done()
	for {
		d.mu.Lock()
		if !d.pending[id] || d.stopped {
			delete(d.active, id)
			d.mu.Unlock()
			return
		}
		delete(d.pending, id)
		d.mu.Unlock()

		d.sem <- struct{}{}
		err := d.refresh(id)
		<-d.sem
		if err != nil {
			select {
			case d.failed <- err:
			default:
			}
			d.mu.Lock()
			d.stopped = true
			delete(d.active, id)
			d.mu.Unlock()
			return
		}
	}
}

// Stop ends processing and waits for running refreshes.
func (d *Dispatcher) Stop() {
	d.mu.Lock()
	d.stopped = true
	d.mu.Unlock()
	d.wg.Wait()
}

// Failed delivers the first refresh error.
func (d *Dispatcher) Failed() <-chan error { return d.failed }
