package docker

import (
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/runtime/endpoint"
)

// TestDockerdKilledAndRestartedResyncs kills the machine's dockerd with
// SIGKILL while containers start and stop, restarts it, and demands that
// after the resync the source's endpoints are exactly `docker ps`: nothing
// left over from before the outage, nothing duplicated, nothing missing.
func TestDockerdKilledAndRestartedResyncs(t *testing.T) {
	testenv.RequireBinary(t, "dockerd")
	prefix, label := testRun(t)
	img := testenv.BusyboxImage(t)
	suffix := label[len(testLabel)+1:]
	src, c := startSource(t)

	var before []string
	for i := range 4 {
		args := []string{"run", "-d", "--label", label, "--name", prefix + "-steady" + string(rune('a'+i))}
		if i%2 == 0 {
			// Comes back after the restart with a new netns.
			args = append(args, "--restart", "always")
		}
		before = append(before, docker(t, append(args, img, "sleep", "300")...))
	}
	c.WaitFor(t, "steady containers", func(s map[string]endpoint.Endpoint) bool {
		for _, id := range before {
			if _, ok := s[id]; !ok {
				return false
			}
		}
		return true
	})

	// Churn: start and remove containers, ignoring the failures while
	// dockerd is down.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := prefix + "-churn" + string(rune('a'+w)) + strings.Repeat("x", i%3) + string(rune('a'+i%26))
				_ = exec.Command("docker", "run", "-d", "--label", label, "--name", name, img, "sleep", "300").Run()
				if i%2 == 1 {
					_ = exec.Command("docker", "rm", "-f", name).Run()
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	time.Sleep(time.Second)
	testenv.KillDockerd(t)
	time.Sleep(500 * time.Millisecond)
	if err := testenv.EnsureDockerd(); err != nil {
		close(stop)
		wg.Wait()
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()

	deadline := time.Now().Add(60 * time.Second)
	for src.Reconnects() == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if src.Reconnects() == 0 {
		t.Fatal("source never noticed that dockerd was killed")
	}
	ours := func(s map[string]endpoint.Endpoint) []string {
		var ids []string
		for id, ep := range s {
			if ep.Containers[0].Labels[testLabel] == suffix {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		return ids
	}
	ps := func() []string {
		out, err := exec.Command("docker", "ps", "-q", "--no-trunc", "--filter", "label="+label).Output()
		if err != nil {
			return nil
		}
		ids := strings.Fields(string(out))
		slices.Sort(ids)
		return ids
	}
	var want []string
	stable := 0
	c.WaitFor(t, "endpoints equal to docker ps", func(s map[string]endpoint.Endpoint) bool {
		want = ps()
		if slices.Equal(ours(s), want) {
			stable++
		} else {
			stable = 0
		}
		return stable >= 3 // three polls in a row: restart policies have settled
	})
	snap := src.Snapshot()
	seen := map[string]bool{}
	for _, ep := range snap {
		if seen[ep.ID] {
			t.Fatalf("endpoint %s twice in the snapshot", ep.ID)
		}
		seen[ep.ID] = true
	}
	snapMap := map[string]endpoint.Endpoint{}
	for _, ep := range snap {
		snapMap[ep.ID] = ep
	}
	if got := ours(snapMap); !slices.Equal(got, want) {
		t.Fatalf("snapshot %v, docker ps %v", got, want)
	}
	// Every endpoint's event history is consistent: added when absent,
	// updated or removed only when present.
	present := map[string]bool{}
	for _, ev := range c.Events() {
		id := ev.Endpoint.ID
		switch ev.Type {
		case endpoint.Added:
			if present[id] {
				t.Fatalf("endpoint %.12s added twice", id)
			}
			present[id] = true
		case endpoint.Updated, endpoint.Removed:
			if !present[id] {
				t.Fatalf("endpoint %.12s %s while absent", id, ev.Type)
			}
			present[id] = ev.Type == endpoint.Updated
		}
	}
	// The restarted containers came back; each endpoint must name its
	// current netns (a new one after the restart).
	for _, id := range want {
		ep := snapMap[id]
		if len(ep.Interfaces) != 1 || ep.Interfaces[0].HostIfindex == 0 {
			t.Errorf("endpoint %.12s after resync: %+v", id, ep.Interfaces)
		}
		key := docker(t, "inspect", "-f", "{{.NetworkSettings.SandboxKey}}", id)
		if ep.Netns.Path != key {
			t.Errorf("endpoint %.12s netns %s, docker says %s", id, ep.Netns.Path, key)
		}
	}
	t.Logf("after the restart: %d of our containers running, %d reconnects", len(want), src.Reconnects())
}
