package api

import (
	"context"
	"sync"
)

// FlowHub keeps the most recent flows and fans new ones out to followers.
// Publishing never blocks: a follower that cannot keep up loses its
// subscription (its channel closes) rather than stalling the event reader.
type FlowHub struct {
	mu   sync.Mutex
	ring []Flow
	head int
	full bool
	subs map[chan Flow]struct{}
}

// NewFlowHub keeps the last keep flows.
func NewFlowHub(keep int) *FlowHub {
	if keep <= 0 {
		keep = 1
	}
	return &FlowHub{ring: make([]Flow, keep), subs: map[chan Flow]struct{}{}}
}

// Publish records f and sends it to every follower.
func (h *FlowHub) Publish(f Flow) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring[h.head] = f
	h.head = (h.head + 1) % len(h.ring)
	if h.head == 0 {
		h.full = true
	}
	for ch := range h.subs {
		select {
		case ch <- f:
		default:
			delete(h.subs, ch)
			close(ch)
		}
	}
}

// Flows returns the backlog, oldest first, and when follow a channel of
// new flows until ctx ends.
func (h *FlowHub) Flows(ctx context.Context, follow bool) ([]Flow, <-chan Flow) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Flow
	if h.full {
		out = append(out, h.ring[h.head:]...)
	}
	out = append(out, h.ring[:h.head]...)
	if !follow {
		return out, nil
	}
	ch := make(chan Flow, 1024)
	h.subs[ch] = struct{}{}
	go func() {
		<-ctx.Done()
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.subs[ch]; ok {
			delete(h.subs, ch)
			close(ch)
		}
	}()
	return out, ch
}
