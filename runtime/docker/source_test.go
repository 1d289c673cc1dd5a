package docker

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/internal/runtimetest"
	"github.com/membrane-fw/membrane/runtime/nsinfo"
)

// checkVeth asserts that itf's host side is a real veth whose peer is the
// container side, on the expected bridge.
func checkVeth(t *testing.T, itf endpoint.Interface, bridge string) {
	t.Helper()
	if itf.HostIfindex == 0 {
		t.Fatalf("interface %s has no host-side veth", itf.Name)
	}
	l, err := netlink.LinkByIndex(itf.HostIfindex)
	if err != nil {
		t.Fatalf("host ifindex %d of %s: %v", itf.HostIfindex, itf.Name, err)
	}
	if l.Type() != "veth" || l.Attrs().Name != itf.HostName || l.Attrs().ParentIndex != itf.Ifindex {
		t.Fatalf("host link %d is %s %q peer %d; want veth %q peer %d", itf.HostIfindex, l.Type(), l.Attrs().Name, l.Attrs().ParentIndex, itf.HostName, itf.Ifindex)
	}
	m, err := netlink.LinkByIndex(l.Attrs().MasterIndex)
	if err != nil || m.Attrs().Name != bridge || itf.Bridge != bridge {
		t.Fatalf("veth %s master: %v %v, reported %q; want %q", itf.HostName, m, err, itf.Bridge, bridge)
	}
	if len(itf.Addrs) == 0 || len(itf.MAC) != 6 {
		t.Fatalf("interface %s: addrs %v mac %v", itf.Name, itf.Addrs, itf.MAC)
	}
}

func hasAddr(itf endpoint.Interface, ip string) bool {
	a := netip.MustParseAddr(ip)
	return slices.ContainsFunc(itf.Addrs, func(p netip.Prefix) bool { return p.Addr() == a })
}

func TestDockerNetworkModes(t *testing.T) {
	prefix, label := testRun(t)
	img := testenv.BusyboxImage(t)
	n1, n2 := prefix+"-n1", prefix+"-n2"
	n1id := dockerNetwork(t, n1)
	n2id := dockerNetwork(t, n2)
	src, c := startSource(t)
	_, lc := runtimetest.StartLinkWatcher(t, src)

	run := func(name string, args ...string) string {
		a := append([]string{"run", "-d", "--label", label, "--name", name}, args...)
		return docker(t, append(a, img, "sleep", "300")...)
	}
	bridgeID := run(prefix+"-bridge", "--label", "app=web")
	userID := run(prefix+"-user", "--network", n1, "--link-local-ip", "169.254.77.7", "--label", "app=db")
	docker(t, "create", "--label", label, "--name", prefix+"-two", "--network", n1, img, "sleep", "300")
	docker(t, "network", "connect", n2, prefix+"-two")
	docker(t, "start", prefix+"-two")
	joinedID := run(prefix+"-joined", "--network", "container:"+prefix+"-bridge", "--label", "app=sidecar", "--label", "team=payments")
	hostID := run(prefix+"-host", "--network", "host", "--label", "app=hostnet")
	noneID := run(prefix+"-none", "--network", "none")

	c.WaitFor(t, "all six containers", func(s map[string]endpoint.Endpoint) bool {
		for _, n := range []string{"bridge", "user", "two", "joined", "host", "none"} {
			if _, ok := byName(s, prefix+"-"+n); !ok {
				return false
			}
		}
		ep, _ := byName(s, prefix+"-bridge")
		return len(ep.Containers) == 2
	})
	state := c.State()

	t.Run("DefaultBridge", func(t *testing.T) {
		ep := state[bridgeID]
		if ep.NetworkMode != endpoint.ModeBridge || ep.Runtime != endpoint.RuntimeDocker || ep.State != endpoint.StateRunning || len(ep.Interfaces) != 1 {
			t.Fatalf("endpoint %+v", ep)
		}
		itf := ep.Interfaces[0]
		checkVeth(t, itf, "docker0")
		ip := docker(t, "inspect", "-f", "{{.NetworkSettings.Networks.bridge.IPAddress}}", bridgeID)
		if itf.Name != "eth0" || itf.Network != "bridge" || !hasAddr(itf, ip) {
			t.Fatalf("interface %+v, want eth0 on bridge with %s", itf, ip)
		}
		if ino, _ := nsinfo.Inode(ep.Netns.Path); ino == 0 || ino != ep.Netns.Inode {
			t.Fatalf("netns %+v: inode of path is %d", ep.Netns, ino)
		}
	})
	t.Run("UserNetwork", func(t *testing.T) {
		ep := state[userID]
		if len(ep.Interfaces) != 1 || ep.Interfaces[0].Network != n1 || ep.Labels["app"] != "db" {
			t.Fatalf("endpoint %+v", ep)
		}
		// Docker gives it the link-local address too.
		ip := docker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", userID)
		if !hasAddr(ep.Interfaces[0], ip) || !hasAddr(ep.Interfaces[0], "169.254.77.7") {
			t.Fatalf("interface %+v, want %s and 169.254.77.7", ep.Interfaces[0], ip)
		}
		checkVeth(t, ep.Interfaces[0], "br-"+n1id[:12])
	})
	t.Run("TwoNetworks", func(t *testing.T) {
		ep, _ := byName(state, prefix+"-two")
		if len(ep.Interfaces) != 2 {
			t.Fatalf("want 2 interfaces, got %+v", ep.Interfaces)
		}
		nets := map[string]string{}
		for _, itf := range ep.Interfaces {
			nets[itf.Network] = itf.Bridge
		}
		if len(nets) != 2 {
			t.Fatalf("networks %v", nets)
		}
		checkVeth(t, ep.Interfaces[0], nets[ep.Interfaces[0].Network])
		checkVeth(t, ep.Interfaces[1], nets[ep.Interfaces[1].Network])
		if nets[n1] != "br-"+n1id[:12] || nets[n2] != "br-"+n2id[:12] || ep.Interfaces[0].HostIfindex == ep.Interfaces[1].HostIfindex {
			t.Fatalf("interfaces %+v", ep.Interfaces)
		}
	})
	t.Run("ContainerModeJoinsOwner", func(t *testing.T) {
		ep := state[bridgeID]
		if _, own := state[joinedID]; own {
			t.Fatal("a container:X container got an endpoint of its own")
		}
		if ep.Containers[0].ID != bridgeID || ep.Containers[1].ID != joinedID {
			t.Fatalf("containers %+v", ep.Containers)
		}
		// The owner's app wins; the joined container's team is shared by
		// every joined container (there is one) and is added.
		if ep.Labels["app"] != "web" || ep.Labels["team"] != "payments" || ep.Labels["container.name"] != prefix+"-bridge" {
			t.Fatalf("labels %v", ep.Labels)
		}
	})
	t.Run("HostMode", func(t *testing.T) {
		ep := state[hostID]
		self, _ := nsinfo.SelfInode()
		if ep.NetworkMode != endpoint.ModeHost || len(ep.Interfaces) != 0 || ep.Netns.Inode != self {
			t.Fatalf("endpoint %+v", ep)
		}
	})
	t.Run("NoneMode", func(t *testing.T) {
		ep := state[noneID]
		if ep.NetworkMode != endpoint.ModeNone || len(ep.Interfaces) != 0 || ep.Netns.Inode == 0 {
			t.Fatalf("endpoint %+v", ep)
		}
	})

	t.Run("ConnectDisconnectRename", func(t *testing.T) {
		docker(t, "network", "connect", n2, userID)
		c.WaitFor(t, "second interface after connect", func(s map[string]endpoint.Endpoint) bool {
			return len(s[userID].Interfaces) == 2
		})
		// The container was known when its new veth appeared: the link
		// watcher names it once the veth's peer is in its netns.
		var newItf endpoint.Interface
		for _, itf := range c.State()[userID].Interfaces {
			if itf.Network == n2 {
				newItf = itf
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			var named bool
			for _, ev := range lc.Events() {
				if ev.Ifindex == newItf.HostIfindex && ev.EndpointID == userID && ev.Container.Name == prefix+"-user" {
					named = true
				}
			}
			if named {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("link watcher never named %s for veth %s: %+v", prefix+"-user", newItf.HostName, lc.Events())
			}
			time.Sleep(50 * time.Millisecond)
		}
		docker(t, "network", "disconnect", n1, userID)
		c.WaitFor(t, "one interface on n2 after disconnect", func(s map[string]endpoint.Endpoint) bool {
			ep := s[userID]
			return len(ep.Interfaces) == 1 && ep.Interfaces[0].Network == n2
		})
		docker(t, "rename", prefix+"-user", prefix+"-renamed")
		c.WaitFor(t, "container.name after rename", func(s map[string]endpoint.Endpoint) bool {
			return s[userID].Labels["container.name"] == prefix+"-renamed"
		})
	})

	t.Run("PauseUnpause", func(t *testing.T) {
		docker(t, "pause", noneID)
		c.WaitFor(t, "paused state", func(s map[string]endpoint.Endpoint) bool {
			return s[noneID].State == endpoint.StatePaused
		})
		docker(t, "unpause", noneID)
		c.WaitFor(t, "running state", func(s map[string]endpoint.Endpoint) bool {
			return s[noneID].State == endpoint.StateRunning
		})
	})

	t.Run("JoinedStopUpdatesOwner", func(t *testing.T) {
		docker(t, "rm", "-f", joinedID)
		c.WaitFor(t, "owner without the joined container", func(s map[string]endpoint.Endpoint) bool {
			ep := s[bridgeID]
			_, team := ep.Labels["team"]
			return len(ep.Containers) == 1 && !team
		})
	})

	t.Run("RemovedOnce", func(t *testing.T) {
		ids := []string{bridgeID, userID, hostID, noneID}
		two, _ := byName(state, prefix+"-two")
		ids = append(ids, two.ID)
		docker(t, append([]string{"rm", "-f"}, ids...)...)
		c.WaitFor(t, "every endpoint removed", func(s map[string]endpoint.Endpoint) bool {
			for _, id := range ids {
				if _, ok := s[id]; ok {
					return false
				}
			}
			return true
		})
		checkLifecycles(t, c.Events(), ids)
	})
}

// checkLifecycles asserts that each id's events are exactly one Added, any
// number of Updated, then one Removed.
func checkLifecycles(t *testing.T, evs []endpoint.Event, ids []string) {
	t.Helper()
	seq := map[string][]string{}
	for _, ev := range evs {
		seq[ev.Endpoint.ID] = append(seq[ev.Endpoint.ID], string(ev.Type))
	}
	for _, id := range ids {
		s := seq[id]
		bad := len(s) < 2 || s[0] != "added" || s[len(s)-1] != "removed"
		for _, x := range s[1:max(len(s)-1, 1)] {
			if x != "updated" {
				bad = true
			}
		}
		if bad {
			t.Errorf("endpoint %.12s: events %v, want added, updated*, removed", id, s)
		}
	}
}

// TestDockerReportsNetworkIDAndICC: each interface carries its Docker
// network's id and whether the network has inter-container communication
// disabled, which the L7 proxy needs to keep Docker's isolation.
func TestDockerReportsNetworkIDAndICC(t *testing.T) {
	prefix, label := testRun(t)
	img := testenv.BusyboxImage(t)
	open, closed := prefix+"-icc", prefix+"-noicc"
	openID := dockerNetwork(t, open)
	closedID := dockerNetwork(t, closed, "-o", "com.docker.network.bridge.enable_icc=false")
	_, c := startSource(t)
	docker(t, "create", "--label", label, "--name", prefix+"-two", "--network", open, img, "sleep", "300")
	docker(t, "network", "connect", closed, prefix+"-two")
	docker(t, "start", prefix+"-two")
	c.WaitFor(t, "the container on both networks", func(s map[string]endpoint.Endpoint) bool {
		ep, ok := byName(s, prefix+"-two")
		return ok && len(ep.Interfaces) == 2
	})
	ep, _ := byName(c.State(), prefix+"-two")
	got := map[string]endpoint.Interface{}
	for _, itf := range ep.Interfaces {
		got[itf.Network] = itf
	}
	if itf := got[open]; itf.NetworkID != openID || itf.NoICC {
		t.Errorf("interface on %s: id %q no_icc %v, want %s and false", open, itf.NetworkID, itf.NoICC, openID)
	}
	if itf := got[closed]; itf.NetworkID != closedID || !itf.NoICC {
		t.Errorf("interface on %s: id %q no_icc %v, want %s and true", closed, itf.NetworkID, itf.NoICC, closedID)
	}
}
