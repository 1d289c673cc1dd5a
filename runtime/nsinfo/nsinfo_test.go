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
	if len(info.Unpaired) != 0 {
		t.Fatalf("unpaired %q: a veth pair inside the namespace leads nowhere", info.Unpaired)
	}
}

// Interfaces that leave the namespace other than through a veth to the
// host: no program sees their traffic, and Unpaired says so.
func TestInspectReportsLinksNoProgramSees(t *testing.T) {
	testenv.RequireRoot(t)
	s := testenv.RandomSuffix(6)
	name, other := "nsu-"+s, "nsv-"+s
	path := testenv.NetnsAdd(t, name)
	testenv.NetnsAdd(t, other)
	parent := "nsud" + s
	ip(t, "link", "add", parent, "type", "veth", "peer", "name", parent+"p") // (no dummy driver here)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", parent).Run() })
	// A macvlan on a host device (Docker's macvlan driver), a veth into
	// another container's namespace, and a macvlan on a link of the
	// namespace itself (its traffic leaves through that link).
	ip(t, "link", "add", "mv0", "link", parent, "type", "macvlan", "mode", "bridge")
	ip(t, "link", "set", "mv0", "netns", name)
	ip(t, "-n", name, "link", "add", "x0", "type", "veth", "peer", "name", "x1", "netns", other)
	ip(t, "-n", name, "link", "add", "in0", "type", "veth", "peer", "name", "in1")
	ip(t, "-n", name, "link", "add", "mv1", "link", "in0", "type", "macvlan")

	info, err := Inspect(path)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(info.Unpaired, "\n")
	for _, want := range []string{"mv0 (macvlan on host device " + parent + ")", "x0 (veth): peer"} {
		if !strings.Contains(got, want) {
			t.Errorf("unpaired %q: want an entry %q", info.Unpaired, want)
		}
	}
	if len(info.Unpaired) != 2 {
		t.Errorf("unpaired %q: want mv0 and x0 only", info.Unpaired)
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
