package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// InCI reports whether the tests run in CI, where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") == "true" }

// Skip skips the test with reason outside CI and fails it in CI.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("required in CI: %s", reason)
	}
	t.Skip(reason)
}

// RequireRoot needs the test to run as root (BPF, netns, Docker).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root (run `make test` as root)")
	}
}

// RequireBinary needs name on PATH.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skip(t, fmt.Sprintf("needs %s on PATH (hack/deps.sh installs it)", name))
	}
	return p
}

// RequireDocker needs a running Docker engine (`make test` starts one).
func RequireDocker(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	RequireBinary(t, "docker")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "version").CombinedOutput(); err != nil {
		Skip(t, fmt.Sprintf("needs a running dockerd (hack/docker-up.sh starts one): %v: %s", err, out))
	}
}

// BusyboxImageName is the name of the tiny test image that BusyboxImage builds.
const BusyboxImageName = "membrane-test/busybox:latest"

// imageMu keeps parallel tests from building the image twice.
var imageMu sync.Mutex

// BusyboxImage makes sure the test image exists, building it with
// `docker import` from a rootfs holding Debian's static busybox (no registry
// is reachable here), and returns its name.
func BusyboxImage(t testing.TB) string {
	t.Helper()
	RequireDocker(t)
	imageMu.Lock()
	defer imageMu.Unlock()
	if exec.Command("docker", "image", "inspect", BusyboxImageName).Run() == nil {
		return BusyboxImageName
	}
	if err := BuildBusyboxImage(BusyboxImageName); err != nil {
		t.Fatalf("building test image: %v", err)
	}
	return BusyboxImageName
}

// BuildBusyboxImage builds image from /bin/busybox (package busybox-static).
func BuildBusyboxImage(image string) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox-static is not installed: %w", err)
	}
	root, err := os.MkdirTemp("", "membrane-rootfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "tmp", "etc", "proc", "sys", "dev", "root", "var/www"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), data, 0o755); err != nil {
		return err
	}
	out, err := exec.Command(filepath.Join(root, "bin/busybox"), "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, name := range bytes.Fields(out) {
		if string(name) == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(root, "bin", string(name))); err != nil && !os.IsExist(err) {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nnogroup:x:65534:\n"), 0o644); err != nil {
		return err
	}
	tarCmd := exec.Command("tar", "-C", root, "-c", ".")
	imp := exec.Command("docker", "import", "-c", `CMD ["/bin/sh"]`, "-c", "ENV PATH=/bin", "-", image)
	pipe, err := tarCmd.StdoutPipe()
	if err != nil {
		return err
	}
	imp.Stdin = pipe
	var stderr bytes.Buffer
	imp.Stderr = &stderr
	if err := tarCmd.Start(); err != nil {
		return err
	}
	if err := imp.Run(); err != nil {
		return fmt.Errorf("docker import: %w: %s", err, stderr.String())
	}
	return tarCmd.Wait()
}
