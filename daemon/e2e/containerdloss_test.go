package e2e

import (
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// TestContainerdRestartUnderDockerKeepsTheEndpoints kills containerd
// under dockerd and membraned: the containers run on (their shims do),
// dockerd reconnects to the restarted containerd, and membraned keeps the
// same endpoints on the same veths, enforcing throughout.
func TestContainerdRestartUnderDockerKeepsTheEndpoints(t *testing.T) {
	testenv.RequireBinary(t, "containerd")
	e := newEnv(t, envOpts{})
	e.writePolicy("db.hcl", dbFromAPIPolicy)
	e.startDaemon()
	db := e.server("db", "app=db")
	api := e.idle("api", "app=api")
	other := e.idle("other", "app=other")
	before := map[string]int{}
	for _, c := range []string{db, api, other} {
		before[c] = e.endpoint(c).Interfaces[0].Ifindex
	}
	dbIP := e.ip(db)
	pid := func(c string) string { return e.docker("inspect", "-f", "{{.State.Pid}}", c) }
	apiPid, otherPid := pid(api), pid(other)
	getFrom := func(pid, ip string) bool {
		return exec.Command("nsenter", "-t", pid, "-m", "-n", "-p", "-u", "-i", "sh", "-c", httpGet(ip, 1)).Run() == nil
	}

	out, err := exec.Command("pidof", "containerd").Output()
	if err != nil {
		t.Fatalf("pidof containerd: %v", err)
	}
	cpid, _ := strconv.Atoi(strings.Fields(string(out))[0])
	t.Cleanup(func() {
		if out, err := exec.Command("bash", "../../hack/docker-up.sh").CombinedOutput(); err != nil {
			t.Errorf("restarting containerd: %v: %s", err, out)
		}
	})
	if err := syscall.Kill(cpid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for syscall.Kill(cpid, 0) == nil {
		time.Sleep(20 * time.Millisecond)
	}
	if !getFrom(apiPid, dbIP) {
		t.Error("api does not reach db while containerd is gone")
	}
	if getFrom(otherPid, dbIP) {
		t.Error("other reaches db while containerd is gone")
	}
	if out, err := exec.Command("bash", "../../hack/docker-up.sh").CombinedOutput(); err != nil {
		t.Fatalf("restarting containerd: %v: %s", err, out)
	}
	e.eventually("docker exec works again", 30*time.Second, func() error {
		return exec.Command("docker", "exec", api, "true").Run()
	})
	for c, ifx := range before {
		if got := e.endpoint(c).Interfaces[0].Ifindex; got != ifx {
			t.Errorf("%s: veth %d -> %d across the containerd restart", c, ifx, got)
		}
	}
	if !e.get(api, dbIP) {
		t.Error("api does not reach db after the containerd restart")
	}
	if e.get(other, dbIP) {
		t.Error("other reaches db after the containerd restart")
	}
	if p := e.status().Errors; len(p) > 0 {
		t.Errorf("status problems after the containerd restart: %q", p)
	}
}
