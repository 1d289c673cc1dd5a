package endpoint

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"
)

func ep(id string, addr string) Endpoint {
	return Endpoint{ID: id, Runtime: RuntimeDocker, NetworkMode: ModeBridge, State: StateRunning,
		Labels:     map[string]string{"app": id},
		Containers: []Container{{ID: id, Name: id}},
		Interfaces: []Interface{{Name: "eth0", HostIfindex: 7, Addrs: []netip.Prefix{netip.MustParsePrefix(addr)}}}}
}

func drain(q *Queue[Event]) []Event {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var out []Event
	go func() {
		defer close(done)
		for ev := range q.Events() {
			out = append(out, ev)
		}
	}()
	go q.Run(ctx)
	for q.Len() > 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond)
	cancel()
	<-done
	return out
}

func types(evs []Event) []string {
	var s []string
	for _, e := range evs {
		s = append(s, string(e.Type)+":"+e.Endpoint.ID)
	}
	return s
}

func TestTableReportsOnlyDifferences(t *testing.T) {
	q := NewQueue[Event]()
	tb := NewTable(q)
	tb.Set(ep("a", "10.0.0.1/24"), false)
	tb.Set(ep("a", "10.0.0.1/24"), false) // identical: nothing
	tb.Set(ep("a", "10.0.0.2/24"), false) // changed: updated
	tb.Set(ep("b", "10.0.0.3/24"), false)
	tb.Delete("a", false)
	tb.Delete("a", false) // unknown: nothing
	// Resync: b unchanged, c new, stale ones go.
	tb.Replace([]Endpoint{ep("b", "10.0.0.3/24"), ep("c", "10.0.0.4/24")})
	tb.Replace(nil)
	got := types(drain(q))
	want := []string{"added:a", "updated:a", "added:b", "removed:a", "added:c", "removed:b", "removed:c"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

func TestTableKeepsItsOwnCopy(t *testing.T) {
	q := NewQueue[Event]()
	tb := NewTable(q)
	e := ep("a", "10.0.0.1/24")
	tb.Set(e, false)
	e.Labels["app"] = "changed"
	e.Interfaces[0].Addrs[0] = netip.MustParsePrefix("10.9.9.9/8")
	got, _ := tb.Get("a")
	if got.Labels["app"] != "a" || got.Interfaces[0].Addrs[0].Addr().String() != "10.0.0.1" {
		t.Fatalf("table shares memory with its caller: %+v", got)
	}
}

func TestQueueNeverBlocksThePusher(t *testing.T) {
	q := NewQueue[Event]()
	// No consumer at all: pushes still return.
	done := make(chan struct{})
	go func() {
		for i := 0; i < 100000; i++ {
			q.Push(Event{Type: Added})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Push blocked without a consumer")
	}
	if q.Len() != 100000 {
		t.Fatalf("len %d", q.Len())
	}
}

func TestDispatcherOrdersPerContainer(t *testing.T) {
	var mu sync.Mutex
	running := map[string]bool{}
	count := map[string]int{}
	d := NewDispatcher(4, func(key string) error {
		mu.Lock()
		if running[key] {
			mu.Unlock()
			t.Errorf("two refreshes of %s at once", key)
			return nil
		}
		running[key] = true
		count[key]++
		mu.Unlock()
		time.Sleep(time.Millisecond)
		mu.Lock()
		running[key] = false
		mu.Unlock()
		return nil
	})
	// Pushed before Start: held until the resync is done.
	d.Push("a")
	time.Sleep(5 * time.Millisecond)
	mu.Lock()
	if count["a"] != 0 {
		t.Fatal("refresh ran before Start")
	}
	mu.Unlock()
	d.Start()
	for i := 0; i < 200; i++ {
		d.Push([]string{"a", "b", "c"}[i%3])
	}
	time.Sleep(100 * time.Millisecond)
	d.Stop()
	mu.Lock()
	defer mu.Unlock()
	for _, k := range []string{"a", "b", "c"} {
		if count[k] == 0 {
			t.Errorf("%s never refreshed", k)
		}
	}
}
