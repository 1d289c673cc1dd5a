package bpf

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// Cleanup (membraned --cleanup, run by the package's removal) removes the
// pin directory whole, so it removes nothing that is not a directory of
// its own on a bpf filesystem: bpffs_dir = "/etc" (the daemon never
// started with it, pinning fails there) or "/var/lib/membrane" is not
// removed, nor the root of a bpf filesystem, where other programs pin too
// (bpffs_dir = "/sys/fs/bpf"). A directory below that root still is.
func TestCleanupRemovesOnlyAPinDirectory(t *testing.T) {
	testenv.RequireRoot(t)
	plain := t.TempDir()
	if err := os.WriteFile(filepath.Join(plain, "keep"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(plain); err == nil {
		t.Errorf("Cleanup(%s), not on a bpf filesystem: no error", plain)
	}
	if _, err := os.Stat(filepath.Join(plain, "keep")); err != nil {
		t.Fatalf("Cleanup removed a directory that is not a pin directory: %v", err)
	}

	// A bpf filesystem of the test's own (each mount is a new instance).
	root := t.TempDir()
	if err := unix.Mount("bpffs", root, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	other := filepath.Join(root, "other-tool")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(root); err == nil {
		t.Errorf("Cleanup of a bpf filesystem's root: no error")
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("Cleanup of a bpf filesystem's root removed another program's pins: %v", err)
	}
	mine := filepath.Join(root, "membrane")
	if err := os.Mkdir(mine, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(mine); err != nil {
		t.Fatalf("Cleanup(%s): %v", mine, err)
	}
	if _, err := os.Stat(mine); !os.IsNotExist(err) {
		t.Errorf("Cleanup left its pin directory: %v", err)
	}
}
