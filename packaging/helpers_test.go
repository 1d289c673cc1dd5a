package packaging

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Test binaries and packages are built once per test binary: every test
// that needs them shares one build (go build and nfpm take seconds each).
var (
	buildMu  sync.Mutex
	binDir   string
	binErr   error
	pkgs     *Result
	pkgsErr  error
	buildTmp string
)

const testVersion = "1.0.0-test"

func TestMain(m *testing.M) {
	code := m.Run()
	if buildTmp != "" {
		os.RemoveAll(buildTmp)
	}
	os.Exit(code)
}

func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// testBinaries builds ./cmd/membrane and ./cmd/membraned the way `make
// build` does, with testVersion stamped in.
func testBinaries(t testing.TB) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if binDir == "" && binErr == nil {
		binErr = func() error {
			var err error
			if buildTmp == "" {
				if buildTmp, err = os.MkdirTemp("", "membrane-packaging-test-"); err != nil {
					return err
				}
			}
			dir := filepath.Join(buildTmp, "bin")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "go", "build",
				"-ldflags", "-X github.com/membrane-fw/membrane/internal/version.Version="+testVersion,
				"-o", dir+"/", "./cmd/membrane", "./cmd/membraned")
			cmd.Dir = repoRoot(t)
			if out, err := cmd.CombinedOutput(); err != nil {
				return &buildError{what: "go build ./cmd/membrane ./cmd/membraned", out: string(out), err: err}
			}
			binDir = dir
			return nil
		}()
	}
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

// testPackages builds the .deb and .rpm from testBinaries.
func testPackages(t testing.TB) Result {
	t.Helper()
	bin := testBinaries(t)
	buildMu.Lock()
	defer buildMu.Unlock()
	if pkgs == nil && pkgsErr == nil {
		var res Result
		res, pkgsErr = Build(context.Background(), Options{
			RepoRoot: repoRoot(t),
			BinDir:   bin,
			OutDir:   filepath.Join(buildTmp, "dist"),
			MTime:    time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		})
		if pkgsErr == nil {
			pkgs = &res
		}
	}
	if pkgsErr != nil {
		t.Fatalf("building packages: %v", pkgsErr)
	}
	return *pkgs
}

type buildError struct {
	what, out string
	err       error
}

func (e *buildError) Error() string {
	return e.what + ": " + e.err.Error() + "\n" + strings.TrimSpace(e.out)
}

// run runs a command and fails the test with its output when it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
