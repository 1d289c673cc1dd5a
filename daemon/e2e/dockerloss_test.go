package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// TestDockerdLossIsShownAndCaughtUp kills dockerd under a running
// membraned: while it is gone, `membrane status` names the lost
// connection and membrane_runtime_connected{runtime="docker"} is 0, and
// the datapath goes on enforcing. Once it is back the loss is cleared,
// membrane_runtime_reconnects_total counts it, and what happened meanwhile
// is caught up: the container dockerd did not restart (no restart policy)
// is gone from the endpoints and from its address, the restarted one is
// enforced on its new veth with its identity.
func TestDockerdLossIsShownAndCaughtUp(t *testing.T) {
	testenv.RequireBinary(t, "dockerd")
	metrics := freePort(t)
	e := newEnv(t, envOpts{metrics: metrics})
	e.writePolicy("db.hcl", `
policy "db" {
  selector = "app=db,e2e=SFX"
  ingress {
    from_endpoints = ["app=api,e2e=SFX"]
    ports          = ["8080/tcp"]
  }
}
`)
	e.startDaemon()
	db := e.run("db", []string{"app=db"}, "echo ok > /var/www/index.html; httpd -f -p 8080 -h /var/www", "--restart", "always")
	api := e.run("api", []string{"app=api"}, "sleep 600", "--restart", "always")
	other := e.run("other", []string{"app=other"}, "sleep 600", "--restart", "always")
	gone := e.idle("gone", "app=gone") // no restart policy
	dbID := e.endpoint(db).Identity
	for _, c := range []string{api, other, gone} {
		e.endpoint(c)
	}
	goneIP := e.ip(gone)
	connected := func() float64 {
		v, ok := scrape(t, metrics, `membrane_runtime_connected{runtime="docker"}`)
		if !ok {
			return -1
		}
		return v
	}
	if c := connected(); c != 1 {
		t.Errorf("membrane_runtime_connected{runtime=\"docker\"} = %v before the loss, want 1", c)
	}
	dbIP := e.ip(db)
	// Without dockerd there is no docker exec: the clients run in their
	// containers' namespaces through nsenter.
	pid := func(c string) string { return e.docker("inspect", "-f", "{{.State.Pid}}", c) }
	apiPid, otherPid := pid(api), pid(other)
	getFrom := func(pid, ip string) bool {
		return exec.Command("nsenter", "-t", pid, "-m", "-n", "-p", "-u", "-i", "sh", "-c", httpGet(ip, 1)).Run() == nil
	}
	if !getFrom(apiPid, dbIP) || getFrom(otherPid, dbIP) {
		t.Fatal("before the loss, through nsenter: api does not reach db or other does")
	}

	testenv.KillDockerd(t)
	e.eventually("status names the lost dockerd", 20*time.Second, func() error {
		for _, p := range e.status().Errors {
			if strings.Contains(p, "dockerd") {
				return nil
			}
		}
		return fmt.Errorf("problems %q", e.status().Errors)
	})
	if c := connected(); c != 0 {
		t.Errorf("membrane_runtime_connected{runtime=\"docker\"} = %v while dockerd is gone, want 0", c)
	}
	// The containers run on without dockerd, and so does the enforcement.
	if !getFrom(apiPid, dbIP) {
		t.Error("api does not reach db while dockerd is gone")
	}
	if getFrom(otherPid, dbIP) {
		t.Error("other reaches db while dockerd is gone")
	}

	if err := testenv.EnsureDockerd(); err != nil {
		t.Fatal(err)
	}
	e.eventually("containers running again", 60*time.Second, func() error {
		for _, c := range []string{db, api, other} {
			out, err := exec.Command("docker", "inspect", "-f", "{{.State.Running}}", c).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "true" {
				return fmt.Errorf("%s not running", c)
			}
		}
		return nil
	})
	e.eventually("the loss cleared and counted", 20*time.Second, func() error {
		for _, p := range e.status().Errors {
			if strings.Contains(p, "dockerd") {
				return fmt.Errorf("status still says %q", p)
			}
		}
		if c := connected(); c != 1 {
			return fmt.Errorf("membrane_runtime_connected %v", c)
		}
		if n, _ := scrape(t, metrics, `membrane_runtime_reconnects_total{runtime="docker"}`); n < 1 {
			return fmt.Errorf("membrane_runtime_reconnects_total %v", n)
		}
		return nil
	})
	e.eventually("gone's endpoint removed", 20*time.Second, func() error {
		if _, err := e.client.Endpoint(context.Background(), gone); err == nil {
			return fmt.Errorf("%s still listed", gone)
		}
		eps, err := e.client.Endpoints(context.Background())
		if err != nil {
			return err
		}
		for _, ep := range eps {
			for _, a := range ep.Addresses {
				if a == goneIP && ep.Labels["app"] == "gone" {
					return fmt.Errorf("endpoint %d still holds gone's address %s", ep.ID, a)
				}
			}
		}
		return nil
	})
	if got := e.endpoint(db).Identity; got != dbID {
		t.Errorf("db identity %d -> %d across the dockerd restart", dbID, got)
	}
	dbIP = e.ip(db)
	e.eventually("api reaches db after the dockerd restart", 20*time.Second, func() error {
		if !e.get(api, dbIP) {
			return fmt.Errorf("no answer")
		}
		return nil
	})
	if e.get(other, dbIP) {
		t.Error("other reaches db after the dockerd restart")
	}
}
