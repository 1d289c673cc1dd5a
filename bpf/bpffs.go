package bpf

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

const bpffsRoot = "/sys/fs/bpf"

// ensureBPFFS mounts bpffs at /sys/fs/bpf when the pin directory lies under
// it and nothing is mounted there yet (as Cilium does; systemd normally
// mounts it, minimal hosts and containers do not).
func ensureBPFFS(pinDir string) error {
	abs, err := filepath.Abs(pinDir)
	if err != nil {
		return err
	}
	if abs != bpffsRoot && !strings.HasPrefix(abs, bpffsRoot+"/") {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(bpffsRoot, &st); err != nil {
		return fmt.Errorf("%s: %w", bpffsRoot, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(bpffsRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("bpffs", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting bpffs at %s: %w", bpffsRoot, err)
	}
	return nil
}
