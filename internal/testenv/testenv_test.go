package testenv

import (
	"os/exec"
	"strings"
	"testing"
)

func TestBusyboxImageRunsAShell(t *testing.T) {
	img := BusyboxImage(t)
	out, err := exec.Command("docker", "run", "--rm", "--network", "none", img, "sh", "-c", "echo hello-$((40+2))").CombinedOutput()
	if err != nil {
		t.Fatalf("docker run: %v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "hello-42" {
		t.Fatalf("got %q, want hello-42", got)
	}
}
