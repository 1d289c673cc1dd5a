package endpoint

import "context"

// Source is what every runtime watcher (runtime/docker, runtime/containerd)
// offers the daemon.
type Source interface {
	// Run lists the runtime's containers, then follows its events,
	// reconnecting with backoff whenever the runtime goes away and resyncing
	// in full after each reconnect, until ctx is done. It returns nil when
	// ctx is cancelled and an error only for a configuration that can never
	// work. Run closes the Events channel when it returns.
	Run(ctx context.Context) error
	// Events delivers every change, in order. It never drops events; the
	// source buffers without bound while the consumer is slow.
	Events() <-chan Event
	// Snapshot returns the endpoints as last reported, sorted by id.
	Snapshot() []Endpoint
	// Synced is closed after the first full list has been reported.
	Synced() <-chan struct{}
	// Progress tells whether the runtime is followed now, and how often
	// it was lost and caught up with (for status and metrics).
	Progress() *Progress
}
