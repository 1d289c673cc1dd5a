package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
)

// follower is one `membrane observe --follow --container REF` stream,
// collecting what it gets.
type follower struct {
	mu  sync.Mutex
	got []api.Flow
}

func (e *env) follow(ctx context.Context, ref string) *follower {
	fl := &follower{}
	ready := make(chan struct{})
	go func() {
		var once sync.Once
		// The backlog (none of these containers has records yet) ends
		// with a flush; the stream is subscribed once Observe is running.
		time.AfterFunc(500*time.Millisecond, func() { once.Do(func() { close(ready) }) })
		_ = e.client.Observe(ctx, api.ObserveFilter{Follow: true, Verdict: "dropped", Container: ref}, func(f api.Flow) error {
			fl.mu.Lock()
			fl.got = append(fl.got, f)
			fl.mu.Unlock()
			return nil
		})
	}()
	<-ready
	return fl
}

// since counts the records at or after t.
func (fl *follower) since(t time.Time) int {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	n := 0
	for _, f := range fl.got {
		if !f.Time.Before(t) {
			n++
		}
	}
	return n
}

// TestObserveFollowContainerStartedLater: `membrane observe --follow
// --container REF` started before the container exists gets its records,
// whether REF is its name, its ID, a prefix of the ID, or the name of a
// container that joins its namespace; and a stream for a container's ID
// does not take the records of a later container given the same name.
func TestObserveFollowContainerStartedLater(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writePolicy("db.hcl", dbFromAPIPolicy)
	e.startDaemon()
	db := e.server("db", "app=db")
	e.endpoint(db)
	dbIP := e.ip(db)

	web := "mte2e-" + e.sfx + "-web"
	side := "mte2e-" + e.sfx + "-side"
	e.names = append(e.names, web, side)
	create := func() string {
		return e.docker("create", "--name", web, "--label", "e2e="+e.sfx, "--label", "app=web",
			"--network", e.network, e.image, "sh", "-c", "sleep 600")
	}
	id := create()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	streams := map[string]*follower{}
	for _, ref := range []string{web, id, id[:12], side} {
		streams[ref] = e.follow(ctx, ref)
	}

	started := time.Now()
	e.docker("start", web)
	e.run("side", nil, "sleep 600", "--network", "container:"+web)
	e.eventually("side in web's endpoint", 20*time.Second, func() error {
		if ep := e.endpoint(web); len(ep.Containers) != 2 {
			return fmt.Errorf("containers %+v", ep.Containers)
		}
		return nil
	})
	if e.get(web, dbIP) {
		t.Fatal("web reached db")
	}
	e.eventually("every stream got web's drop", 10*time.Second, func() error {
		for ref, fl := range streams {
			if fl.since(started) == 0 {
				return fmt.Errorf("observe --follow --container %s: no record", ref)
			}
		}
		return nil
	})

	// The name passes to a new container: the name's stream follows it,
	// the old ID's does not.
	e.docker("rm", "-f", side, web)
	create()
	e.docker("start", web)
	e.endpoint(web)
	again := time.Now()
	if e.get(web, dbIP) {
		t.Fatal("the new web reached db")
	}
	e.eventually("the name's stream got the new web's drop", 10*time.Second, func() error {
		if streams[web].since(again) == 0 {
			return fmt.Errorf("no record")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	for _, ref := range []string{id, id[:12]} {
		if n := streams[ref].since(again); n != 0 {
			t.Errorf("observe --follow --container %s (the removed container): %d records of the new container named %s", ref, n, web)
		}
	}
}
