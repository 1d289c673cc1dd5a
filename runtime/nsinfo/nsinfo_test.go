package nsinfo

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/membrane-fw/membrane/internal/testenv"
)

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func TestInspectFindsHostPeerThroughIFLALink(t *testing.T) {
	testenv.RequireRoot(t)
	s := testenv.RandomSuffix(6)
	name := "nsi-" + s
	path := testenv.NetnsAdd(t, name)
	host := "nsih" + s
	// The host end gets a name that says nothing about the container: the
	// peer must be found through IFLA_LINK, not by name.
	ip(t, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", name)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", host).Run() })
	ip(t, "-n", name, "addr", "add", "10.77.0.5/16", "dev", "eth0")
	ip(t, "-n", name, "addr", "add", "2001:db8::5/64", "dev", "eth0", "nodad")
	ip(t, "-n", name, "link", "set", "eth0", "up")
	// A second veth whose peer stays inside the namespace: no host side.
	ip(t, "-n", name, "link", "add", "in0", "type", "veth", "peer", "name", "in1")

	info, err := Inspect(path)
	if err != nil {
		t.Fatal(err)
	}
	ino, _ := Inode(path)
	if info.Host || info.Netns.Inode != ino || info.Netns.Path != path {
		t.Fatalf("info %+v", info)
	}
	if len(info.Interfaces) != 3 {
		t.Fatalf("interfaces %+v", info.Interfaces)
	}
	hl, _ := netlink.LinkByName(host)
	eth0 := info.Interfaces[0]
	if eth0.Name != "eth0" || eth0.HostIfindex != hl.Attrs().Index || eth0.HostName != host {
		t.Fatalf("eth0 %+v, want host side %s (%d)", eth0, host, hl.Attrs().Index)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.77.0.5/16"), netip.MustParsePrefix("2001:db8::5/64")}
	if len(eth0.Addrs) != 2 || eth0.Addrs[0] != want[0] || eth0.Addrs[1] != want[1] {
		t.Fatalf("addrs %v, want %v (no link-local)", eth0.Addrs, want)
	}
	for _, itf := range info.Interfaces[1:] {
		if itf.HostIfindex != 0 {
			t.Fatalf("%s has a host side although its peer is in the same netns: %+v", itf.Name, itf)
		}
	}
}

func TestInspectHostAndGone(t *testing.T) {
	testenv.RequireRoot(t)
	info, err := Inspect("/proc/self/ns/net")
	if err != nil || !info.Host || len(info.Interfaces) != 0 {
		t.Fatalf("host netns: %+v %v", info, err)
	}
	if _, err := Inspect(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, ErrGone) {
		t.Fatalf("missing file: %v", err)
	}
	// An unmounted bind-mount target is a plain empty file.
	f := filepath.Join(t.TempDir(), "stale")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Inspect(f); !errors.Is(err, ErrGone) {
		t.Fatalf("plain file: %v", err)
	}
}
