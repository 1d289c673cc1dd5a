package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RandomSuffix returns n random hex characters for unique test names.
func RandomSuffix(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// dockerUp reports whether `docker version` answers.
func dockerUp() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "docker", "version").Run() == nil
}

// EnsureDockerd starts dockerd the way hack/docker-up.sh does (against the
// running containerd, logging to /var/log/dockerd.log) when `docker version`
// does not answer, and waits up to five minutes until it does (dockerd
// restores every container before it listens). Tests that stop
// dockerd call it from t.Cleanup so the machine's shared engine is back even
// when they fail.
func EnsureDockerd() error {
	if dockerUp() {
		return nil
	}
	// A dockerd that is still loading its containers (which takes minutes
	// with a few hundred stopped ones on a loaded machine) is waited for,
	// not started twice.
	if pid, err := DockerdPid(); err == nil && syscall.Kill(pid, 0) == nil {
		return waitDockerd()
	}
	log, err := os.OpenFile("/var/log/dockerd.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command("dockerd", "--containerd=/run/containerd/containerd.sock")
	cmd.Stdout, cmd.Stderr = log, log
	// Its own session, so it outlives the test binary like nohup would.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start dockerd: %w", err)
	}
	_ = cmd.Process.Release()
	return waitDockerd()
}

func waitDockerd() error {
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		if dockerUp() {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("dockerd did not answer within 5 minutes; see /var/log/dockerd.log")
}

// DockerdPid returns the pid of the running dockerd (from its pid file).
func DockerdPid() (int, error) {
	b, err := os.ReadFile("/var/run/docker.pid")
	if err != nil {
		return 0, fmt.Errorf("dockerd pid file: %w", err)
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// KillDockerd kills the shared dockerd with SIGKILL and registers a cleanup
// that brings it back (EnsureDockerd) whatever happens to the test. It
// returns once the old process is gone.
func KillDockerd(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		if err := EnsureDockerd(); err != nil {
			t.Errorf("restarting dockerd after the test: %v", err)
		}
	})
	pid, err := DockerdPid()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill dockerd %d: %v", pid, err)
	}
	for i := 0; i < 100; i++ {
		if syscall.Kill(pid, 0) != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	// dockerd leaves its pid file behind when killed; a new dockerd
	// refuses to start only if the pid in it is alive, which it is not.
}

// RequireContainerd needs a running containerd at the default socket.
func RequireContainerd(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	RequireBinary(t, "ctr")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ctr", "version").CombinedOutput(); err != nil {
		Skip(t, fmt.Sprintf("needs a running containerd (hack/docker-up.sh starts one): %v: %s", err, out))
	}
}

// ContainerdBusyboxImage imports the busybox test image (BusyboxImage) into
// containerd namespace ns (`docker save | ctr -n ns images import`, which
// also unpacks it) and returns its containerd name.
func ContainerdBusyboxImage(t testing.TB, ns string) string {
	t.Helper()
	RequireContainerd(t)
	img := BusyboxImage(t)
	save := exec.Command("docker", "save", img)
	imp := exec.Command("ctr", "-n", ns, "images", "import", "-")
	pipe, err := save.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	imp.Stdin = pipe
	if err := save.Start(); err != nil {
		t.Fatal(err)
	}
	if out, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("ctr images import: %v: %s", err, out)
	}
	if err := save.Wait(); err != nil {
		t.Fatalf("docker save: %v", err)
	}
	name := "docker.io/" + img
	t.Cleanup(func() { _ = exec.Command("ctr", "-n", ns, "images", "rm", "--sync", name).Run() })
	return name
}

// NetnsAdd creates a named network namespace (`ip netns add`, so it is
// /run/netns/NAME) and removes it when the test ends.
func NetnsAdd(t testing.TB, name string) string {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return "/run/netns/" + name
}
