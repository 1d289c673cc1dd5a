package bpf

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// SelfCgroupID is the cgroup v2 id of the calling process (what
// bpf_skb_cgroup_id returns for its sockets): the inode number of its
// directory in the cgroup2 hierarchy. For Config.ProxyCgroup when the proxy
// runs in this process.
func SelfCgroupID() (uint64, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rel, ok := strings.CutPrefix(l, "0::"); ok {
			return CgroupID(rel)
		}
	}
	return 0, fmt.Errorf("this process has no cgroup v2 entry in /proc/self/cgroup")
}

// CgroupID is the cgroup v2 id of the cgroup at rel in the hierarchy
// ("/system.slice/membrane-envoy.service"). A cgroup removed and made
// again (a unit restarted) has a new id.
func CgroupID(rel string) (uint64, error) {
	root, err := Cgroup2Mount()
	if err != nil {
		return 0, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(root, rel), &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", rel, err)
	}
	return st.Ino, nil
}

// NoCgroup as Config.ProxyCgroup is a cgroup no socket is in: from-proxy
// marks are taken from none, and the proxy port is handed no connection
// (the proxy is not running). 0 would turn the check off.
const NoCgroup = ^uint64(0)

// Cgroup2Mount is where the cgroup v2 hierarchy is mounted
// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host).
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// ... mountpoint ... - fstype source opts
		fs := strings.Fields(s.Text())
		for i, x := range fs {
			if x == "-" && i+1 < len(fs) && fs[i+1] == "cgroup2" && fs[3] == "/" {
				return fs[4], nil
			}
		}
	}
	return "", fmt.Errorf("no cgroup2 mount")
}
