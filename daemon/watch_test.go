package daemon

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// policyWatch runs watchPolicyDir on dir; each reload calls onReload with
// its count (from 1) and is then reported on the returned channel.
func policyWatch(t *testing.T, dir string, onReload func(n int)) <-chan int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	reloads := make(chan int, 16)
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchPolicyDir(ctx, dir, 20*time.Millisecond, func(context.Context, time.Time) {
			n++
			onReload(n)
			reloads <- n
		}, nil, slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() { cancel(); <-done })
	return reloads
}

func waitReload(t *testing.T, reloads <-chan int, want int, within time.Duration, why string) {
	t.Helper()
	select {
	case n := <-reloads:
		if n != want {
			t.Fatalf("reload %d, want %d", n, want)
		}
	case <-time.After(within):
		t.Fatalf("no reload %d within %v: %s", want, within, why)
	}
}

// A policy directory that appears (created at boot, restored by a tool)
// is read once the watch is on it: a file written into it right after the
// first read still gets read, instead of the set staying without it.
func TestPolicyWatchSeesFilesWrittenAsTheDirectoryAppears(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "policies.d")
	reloads := policyWatch(t, dir, func(n int) {
		if n == 1 {
			// The tool that created the directory copies the files in.
			if err := os.WriteFile(filepath.Join(dir, "a.hcl"), []byte("# a\n"), 0o644); err != nil {
				t.Error(err)
			}
		}
	})
	time.Sleep(200 * time.Millisecond) // the watcher has found no directory
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	waitReload(t, reloads, 1, 5*time.Second, "the directory appeared")
	waitReload(t, reloads, 2, 3*time.Second, "a file written as the directory appeared was never read")
}

// A directory swapped whole (`mv policies.d policies.old; mv
// policies.new policies.d`) is read again once the new one is in place,
// even when the reload for the old one's departure ran before the new one
// arrived (which left the daemon reporting a missing directory, and the
// new set unread, until some later change).
func TestPolicyWatchFollowsADirectorySwappedIntoPlace(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "policies.d")
	next := filepath.Join(root, "policies.new")
	for _, d := range []string{dir, next} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(next, "b.hcl"), []byte("# b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var sawNew bool
	reloads := policyWatch(t, dir, func(n int) {
		if n == 1 {
			// The second half of the swap lands right after the
			// reload for the first half.
			if err := os.Rename(next, dir); err != nil {
				t.Error(err)
			}
		}
		if n == 2 {
			_, err := os.Stat(filepath.Join(dir, "b.hcl"))
			sawNew = err == nil
		}
	})
	time.Sleep(100 * time.Millisecond) // the watch is in place
	if err := os.Rename(dir, filepath.Join(root, "policies.old")); err != nil {
		t.Fatal(err)
	}
	waitReload(t, reloads, 1, 3*time.Second, "the directory was renamed away")
	waitReload(t, reloads, 2, 3*time.Second, "the directory swapped into place was never read")
	if !sawNew {
		t.Error("the second reload did not see the new directory")
	}
}

// A policy file that is a symbolic link is reloaded when the file it leads
// to changes, though that happens outside the policy directory; other
// files beside the target do not cause reloads.
func TestPolicyWatchFollowsLinkTargets(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "policies.d")
	shared := filepath.Join(root, "shared")
	for _, d := range []string{dir, shared} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	target := filepath.Join(shared, "a.hcl")
	if err := os.WriteFile(target, []byte("# a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A relative link, as `ln -s ../shared/a.hcl` makes.
	if err := os.Symlink("../shared/a.hcl", filepath.Join(dir, "a.hcl")); err != nil {
		t.Fatal(err)
	}
	reloads := policyWatch(t, dir, func(int) {})
	time.Sleep(100 * time.Millisecond) // the watch is in place
	if err := os.WriteFile(filepath.Join(shared, "unrelated.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-reloads:
		t.Fatalf("reload %d for a file no link leads to", n)
	case <-time.After(300 * time.Millisecond):
	}
	if err := os.WriteFile(target, []byte("# a, edited\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitReload(t, reloads, 1, 3*time.Second, "the link's target was edited")
	if err := os.Remove(target); err != nil {
		t.Fatal(err)
	}
	waitReload(t, reloads, 2, 3*time.Second, "the link's target was removed")
}

// A policy directory that is a symbolic link swapped to a new target (ln
// -s v2 tmp && mv -T tmp policies.d, the usual atomic deploy) is read
// again: the old target, which the watch was on, does not change.
func TestPolicyWatchFollowsADirectoryLinkSwap(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "policies.d")
	for _, v := range []string{"v1", "v2"} {
		if err := os.Mkdir(filepath.Join(root, v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "v2", "b.hcl"), []byte("# b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("v1", dir); err != nil {
		t.Fatal(err)
	}
	var sawV2 bool
	reloads := policyWatch(t, dir, func(int) {
		_, err := os.Stat(filepath.Join(dir, "b.hcl"))
		sawV2 = err == nil
	})
	time.Sleep(100 * time.Millisecond) // the watch is in place
	if err := os.Symlink("v2", filepath.Join(root, "tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(root, "tmp"), dir); err != nil {
		t.Fatal(err)
	}
	waitReload(t, reloads, 1, 3*time.Second, "the directory link was swapped to a new target")
	if !sawV2 {
		t.Error("the reload did not see the new target")
	}
	// And the new target is watched.
	if err := os.WriteFile(filepath.Join(root, "v2", "c.hcl"), []byte("# c\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitReload(t, reloads, 2, 3*time.Second, "a file was added to the new target")
}
