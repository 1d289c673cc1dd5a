package docker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/internal/runtimetest"
	"github.com/membrane-fw/membrane/runtime/linkwatch"
)

// runContainers creates and starts n labelled containers on the default
// bridge, `workers` at a time, and returns their ids and the time each
// ContainerStart call returned.
func runContainers(t testing.TB, cli *client.Client, n, workers int, prefix, label string) ([]string, []time.Time) {
	t.Helper()
	img := testenv.BusyboxImage(t)
	k, v := label[:len(testLabel)], label[len(testLabel)+1:]
	ids := make([]string, n)
	started := make([]time.Time, n)
	errs := make(chan error, n)
	endpoint.Parallel(n, workers, func(i int) {
		ctx := context.Background()
		r, err := cli.ContainerCreate(ctx, &container.Config{
			Image: img, Cmd: []string{"sleep", "300"}, Labels: map[string]string{k: v, "app": "scale"},
		}, &container.HostConfig{LogConfig: container.LogConfig{Type: "none"}}, nil, nil, fmt.Sprintf("%s-%03d", prefix, i))
		if err != nil {
			errs <- err
			return
		}
		ids[i] = r.ID
		if err := cli.ContainerStart(ctx, r.ID, container.StartOptions{}); err != nil {
			errs <- err
			return
		}
		started[i] = time.Now()
	})
	close(errs)
	for err := range errs {
		t.Fatalf("starting containers: %v", err)
	}
	return ids, started
}

func removeContainers(t testing.TB, cli *client.Client, ids []string, workers int) {
	t.Helper()
	endpoint.Parallel(len(ids), workers, func(i int) {
		if err := cli.ContainerRemove(context.Background(), ids[i], container.RemoveOptions{Force: true}); err != nil {
			t.Errorf("remove %.12s: %v", ids[i], err)
		}
	})
}

func newClient(t testing.TB) *client.Client {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestHundredContainersConcurrently starts and removes 100 containers
// concurrently: every endpoint is added once and removed once, in that
// order, and the link watcher reported each container's veth once, on its
// bridge, under the endpoint's name (and, logged, how many of them before
// Docker announced the container's start).
func TestHundredContainersConcurrently(t *testing.T) {
	const n = 100
	prefix, label := testRun(t)
	src, c := startSource(t)
	_, lc := runtimetest.StartLinkWatcher(t, src)
	cli := newClient(t)

	// Docker's own start events, to compare the watcher's times against.
	ectx, ecancel := context.WithCancel(context.Background())
	defer ecancel()
	msgs, _ := cli.Events(ectx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", "container"), filters.Arg("event", "start"), filters.Arg("label", label))})
	var startMu sync.Mutex
	startAt := map[string]time.Time{}
	go func() {
		for m := range msgs {
			startMu.Lock()
			startAt[m.Actor.ID] = time.Unix(0, m.TimeNano)
			startMu.Unlock()
		}
	}()

	t0 := time.Now()
	ids, _ := runContainers(t, cli, n, 8, prefix, label)
	t.Logf("started %d containers in %v", n, time.Since(t0))
	c.WaitFor(t, "100 endpoints", func(s map[string]endpoint.Endpoint) bool {
		for _, id := range ids {
			if len(s[id].Interfaces) != 1 {
				return false
			}
		}
		return true
	})
	eps := c.State()

	lEvents := lc.Events()
	added := map[int]linkwatch.Event{}
	for _, ev := range lEvents {
		if ev.Type == linkwatch.Added {
			if _, dup := added[ev.Ifindex]; dup {
				t.Errorf("veth %d added twice", ev.Ifindex)
			}
			added[ev.Ifindex] = ev
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		startMu.Lock()
		got := len(startAt)
		startMu.Unlock()
		if got >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	startMu.Lock()
	before := 0
	for _, id := range ids {
		itf := eps[id].Interfaces[0]
		lev, ok := added[itf.HostIfindex]
		if !ok {
			t.Errorf("container %.12s: link watcher never reported veth %s (%d)", id, itf.HostName, itf.HostIfindex)
			continue
		}
		if lev.Master != "docker0" || lev.Name != itf.HostName {
			t.Errorf("container %.12s: watcher reported %s on %s, endpoint has %s", id, lev.Name, lev.Master, itf.HostName)
		}
		st, ok := startAt[id]
		if !ok {
			t.Errorf("container %.12s: no start event from docker", id)
		} else if lev.Time.Before(st) {
			before++
		}
	}
	startMu.Unlock()
	// When the watcher read a notification depends on the scheduler: on
	// a loaded machine it can come after dockerd's start event, though the
	// kernel made the veth before the container ran. A measure, not a check.
	t.Logf("%d of %d veths were reported before docker's start event", before, n)

	t0 = time.Now()
	removeContainers(t, cli, ids, 8)
	t.Logf("removed %d containers in %v", n, time.Since(t0))
	c.WaitFor(t, "100 endpoints removed", func(s map[string]endpoint.Endpoint) bool {
		for _, id := range ids {
			if _, ok := s[id]; ok {
				return false
			}
		}
		return true
	})
	checkLifecycles(t, c.Events(), ids)
	// And the watcher saw every veth go.
	deadline = time.Now().Add(10 * time.Second)
	for {
		removed := map[int]bool{}
		for _, ev := range lc.Events() {
			if ev.Type == linkwatch.Removed {
				removed[ev.Ifindex] = true
			}
		}
		missing := 0
		for _, id := range ids {
			if !removed[eps[id].Interfaces[0].HostIfindex] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("link watcher missed the removal of %d veths", missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
