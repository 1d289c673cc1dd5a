package packaging

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// The Debian 12 rootfs that the systemd test boots: the smallest set that
// runs systemd as PID 1 and installs the package (init-system-helpers comes
// with systemd; passwd is essential; nftables is the package's dependency
// for the L7 proxy path: dpkg -i does not fetch it).
const (
	rootfsSuite    = "bookworm"
	rootfsVariant  = "minbase"
	rootfsCacheDir = "/var/cache/membrane-test"
)

var rootfsPackages = []string{"systemd", "systemd-sysv", "dbus", "nftables"}

// aptMirror returns the Debian mirror this machine's apt uses for suite:
// the test never names an outside host of its own.
func aptMirror(suite string) (string, error) {
	var candidates []string
	// deb822 .sources files.
	sources, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range sources {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, stanza := range strings.Split(string(data), "\n\n") {
			fields := map[string]string{}
			for _, line := range strings.Split(stanza, "\n") {
				if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, " ") {
					fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
				}
			}
			if strings.EqualFold(fields["enabled"], "no") || !hasWord(fields["types"], "deb") || !hasWord(fields["suites"], suite) || !hasWord(fields["components"], "main") {
				continue
			}
			candidates = append(candidates, strings.Fields(fields["uris"])...)
		}
	}
	// One-line sources.list format.
	lists, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	for _, f := range append([]string{"/etc/apt/sources.list"}, lists...) {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if i := strings.Index(line, "#"); i >= 0 {
				line = line[:i]
			}
			if strings.Contains(line, "[") { // drop [options]
				if j := strings.Index(line, "]"); j > 0 {
					line = line[:strings.Index(line, "[")] + line[j+1:]
				}
			}
			f := strings.Fields(line)
			if len(f) >= 4 && f[0] == "deb" && f[2] == suite && hasWord(strings.Join(f[3:], " "), "main") {
				candidates = append(candidates, f[1])
			}
		}
		fh.Close()
	}
	if len(candidates) == 0 {
		return "", fmt.Errorf("no apt source for %s main in /etc/apt/sources.list(.d); debootstrap needs the mirror apt uses", suite)
	}
	return candidates[0], nil
}

func hasWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if f == w {
			return true
		}
	}
	return false
}

// systemdImage returns a Docker image holding a Debian 12 rootfs with
// systemd, building it when missing: from the cached tarball in
// /var/cache/membrane-test when there is one (seconds), else with
// debootstrap from apt's mirror (about a minute), caching the tarball. The
// image and tarball names carry a hash of everything that shapes the rootfs,
// so a change to the package list builds a new one.
func systemdImage(t *testing.T) string {
	t.Helper()
	testenv.RequireDocker(t)
	key := rootfsKey(t)
	image := "membrane-test/debian12-systemd:" + key
	if exec.Command("docker", "image", "inspect", image).Run() == nil {
		return image
	}
	tarball := systemdRootfs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "import", "-c", `CMD ["/lib/systemd/systemd"]`, "-c", "ENV container=docker", tarball, image).CombinedOutput(); err != nil {
		t.Fatalf("docker import %s: %v: %s", tarball, err, out)
	}
	return image
}

// rootfsKey is a hash of everything that shapes the rootfs (suite, variant,
// packages, apt's mirror), which names its tarball and image.
func rootfsKey(t *testing.T) string {
	t.Helper()
	mirror, err := aptMirror(rootfsSuite)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte(strings.Join([]string{rootfsSuite, rootfsVariant, strings.Join(rootfsPackages, ","), mirror}, "|")))
	return hex.EncodeToString(h[:])[:16]
}

// systemdRootfs returns the tarball of a Debian 12 rootfs with systemd in
// /var/cache/membrane-test, made with debootstrap from apt's mirror when
// missing (about a minute). No Docker: systemdImage imports it, and
// nspawnSystemd boots it as it is.
func systemdRootfs(t *testing.T) string {
	t.Helper()
	mirror, err := aptMirror(rootfsSuite)
	if err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(rootfsCacheDir, "debian12-systemd-"+rootfsKey(t)+".tar")
	if _, err := os.Stat(tarball); err != nil {
		testenv.RequireBinary(t, "debootstrap")
		if err := os.MkdirAll(rootfsCacheDir, 0o755); err != nil {
			t.Fatal(err)
		}
		root, err := os.MkdirTemp("/var/tmp", "membrane-rootfs-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(root)
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		start := time.Now()
		cmd := exec.CommandContext(ctx, "debootstrap", "--variant="+rootfsVariant,
			"--include="+strings.Join(rootfsPackages, ","), rootfsSuite, root, mirror)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("debootstrap %s from %s: %v\n%s", rootfsSuite, mirror, err, tail(string(out), 30))
		}
		t.Logf("debootstrap took %s", time.Since(start).Round(time.Second))
		// No apt caches in the image: smaller and reproducible.
		for _, p := range []string{"var/cache/apt/archives", "var/lib/apt/lists"} {
			_ = exec.Command("find", filepath.Join(root, p), "-type", "f", "-delete").Run()
		}
		tmp := tarball + ".tmp"
		if out, err := exec.CommandContext(ctx, "tar", "--numeric-owner", "-C", root, "-cf", tmp, ".").CombinedOutput(); err != nil {
			os.Remove(tmp)
			t.Fatalf("tar rootfs: %v: %s", err, out)
		}
		if err := os.Rename(tmp, tarball); err != nil {
			t.Fatal(err)
		}
	}
	return tarball
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func TestAptMirrorIsTheOneAptUses(t *testing.T) {
	m, err := aptMirror(rootfsSuite)
	if err != nil {
		testenv.Skip(t, err.Error())
	}
	if !strings.HasPrefix(m, "http") {
		t.Fatalf("mirror %q is not a URL", m)
	}
	out, err := exec.Command("apt-get", "indextargets", "--format", "$(URI)").Output()
	if err == nil && !strings.Contains(string(out), strings.TrimSuffix(m, "/")) {
		t.Fatalf("apt does not use %s:\n%s", m, out)
	}
}
