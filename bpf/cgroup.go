package bpf

import (
	"bufio"
	"errors"
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
	_, rel, err := selfCgroupDir()
	if err != nil {
		return 0, err
	}
	return CgroupID(rel)
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

// Cgroup is a cgroup v2 directory as nftables' `socket cgroupv2 level
// Level "Path"` names it, for the rules of PrepareProxyPath that trust a
// mark only from the proxy's sockets. nft resolves Path under
// /sys/fs/cgroup, wherever cgroup2 is mounted, and the kernel compares the
// socket's ancestor at depth Level (the hierarchy's root is 0) with it, so
// the match holds for the cgroup and its descendants. The zero Cgroup is
// "unknown": the rules then trust the mark from any socket.
type Cgroup struct {
	Path  string // relative to /sys/fs/cgroup, as nft wants it
	Level int    // depth in the cgroup2 hierarchy, at least 1
	ID    uint64 // inode of the directory (SelfCgroupID)
}

// nftCgroupRoot is where nft looks up a cgroupv2 path (nftables'
// SYSFS_CGROUPSV2_PATH), whatever the host mounts there.
const nftCgroupRoot = "/sys/fs/cgroup"

// ErrNoProxyCgroup says that the calling process has no cgroup that
// nftables can tell from the others: no cgroup v2, or it sits in the
// hierarchy's root (a cgroup namespace's root looks the same), where
// `level 0` would match every socket on the host.
var ErrNoProxyCgroup = errors.New("no cgroup v2 of its own")

// SelfCgroup is the calling process's cgroup v2 for the nftables match
// (see Cgroup), or an error wrapping ErrNoProxyCgroup.
func SelfCgroup() (Cgroup, error) {
	dir, rel, err := selfCgroupDir()
	if err != nil {
		return Cgroup{}, fmt.Errorf("%w: %v", ErrNoProxyCgroup, err)
	}
	rel = strings.Trim(rel, "/")
	if rel == "" {
		return Cgroup{}, fmt.Errorf("%w: this process is in the cgroup2 root", ErrNoProxyCgroup)
	}
	path, err := filepath.Rel(nftCgroupRoot, dir)
	if err != nil {
		return Cgroup{}, fmt.Errorf("%w: %v", ErrNoProxyCgroup, err)
	}
	if strings.ContainsAny(path, "\"\\\n") {
		return Cgroup{}, fmt.Errorf("%w: cgroup path %q has characters nft cannot take", ErrNoProxyCgroup, path)
	}
	var st, nst syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return Cgroup{}, fmt.Errorf("%w: cgroup %s: %v", ErrNoProxyCgroup, dir, err)
	}
	// nft joins the path to /sys/fs/cgroup itself; make sure that names
	// the same directory (it does not when /sys/fs/cgroup is not mounted
	// as it is here, say in another mount namespace).
	if err := syscall.Stat(filepath.Join(nftCgroupRoot, path), &nst); err != nil || nst.Ino != st.Ino || nst.Dev != st.Dev {
		return Cgroup{}, fmt.Errorf("%w: %s is not %s under %s", ErrNoProxyCgroup, path, dir, nftCgroupRoot)
	}
	return Cgroup{Path: path, Level: len(strings.Split(rel, "/")), ID: st.Ino}, nil
}

// selfCgroupDir is the calling process's cgroup v2 directory (dir, under
// the cgroup2 mount) and its path in the hierarchy (rel, from
// /proc/self/cgroup, starting with "/").
func selfCgroupDir() (dir, rel string, err error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", "", err
	}
	found := false
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			rel, found = p, true
		}
	}
	if !found {
		return "", "", fmt.Errorf("this process has no cgroup v2 entry in /proc/self/cgroup")
	}
	root, err := Cgroup2Mount()
	if err != nil {
		return "", "", err
	}
	return filepath.Join(root, rel), rel, nil
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
