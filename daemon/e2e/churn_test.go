package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// TestChurnConverges starts 40 containers in parallel, removing every
// other one as soon as it runs, then removes the rest the same way, and
// demands after each round that membraned agrees with Docker: one
// enforced endpoint per running container and none for the others, and
// in the kernel exactly their veths in the endpoints map and among the
// pinned links, exactly their addresses in the ipcache (for the test's
// subnet) and their identities in the policy map, and identities in use
// exactly for their label sets.
func TestChurnConverges(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writePolicy("churn.hcl", `
policy "churn" {
  selector = "churn,e2e=SFX"
  ingress {
    from_endpoints = ["app=nobody"]
  }
}
`)
	e.startDaemon()
	steady := e.idle("steady", "churn=steady")
	e.endpoint(steady)
	subnet := netip.MustParsePrefix(e.docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", e.network))
	gateway := netip.MustParseAddr(e.docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", e.network))

	const n = 40
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("mte2e-%s-churn%d", e.sfx, i)
		e.names = append(e.names, names[i])
	}
	parallel := func(what string, fn func(i int) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, n)
		sem := make(chan struct{}, 8)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				errs[i] = fn(i)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("%s %s: %v", what, names[i], err)
			}
		}
	}
	docker := func(args ...string) error {
		if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	parallel("start", func(i int) error {
		err := docker("run", "-d", "--name", names[i], "--network", e.network, "--label", "e2e="+e.sfx,
			"--label", "churn=c"+strconv.Itoa(i%5), e.image, "sleep", "600")
		if err == nil && i%2 == 1 {
			err = docker("rm", "-f", names[i])
		}
		return err
	})
	e.converged("after the start", subnet, gateway)
	parallel("remove", func(i int) error {
		if i%2 == 1 {
			return nil
		}
		return docker("rm", "-f", names[i])
	})
	e.converged("after the removal", subnet, gateway)
}

// converged waits until membraned's endpoints, and the kernel's endpoints
// map, link pins and ipcache entries in subnet (but the bridge's own
// address, gateway, which is the host's), are those of the running
// containers of e, and the identities in use are their label sets.
func (e *env) converged(when string, subnet netip.Prefix, gateway netip.Addr) {
	e.t.Helper()
	e.eventually(when+": membraned agrees with Docker", 60*time.Second, func() error {
		out, err := exec.Command("docker", "ps", "-q", "--no-trunc", "--filter", "label=e2e="+e.sfx).Output()
		if err != nil {
			return err
		}
		running := strings.Fields(string(out))
		slices.Sort(running)
		eps, err := e.client.Endpoints(context.Background())
		if err != nil {
			return err
		}
		var ids []string
		ifaces, addrs, labelSets, idents := map[int]bool{}, map[netip.Addr]bool{}, map[string]bool{}, map[int]bool{}
		for _, ep := range eps {
			if ep.Labels["e2e"] != e.sfx {
				continue
			}
			if !ep.Enforcing || len(ep.Interfaces) != 1 {
				return fmt.Errorf("endpoint %d (%v): enforcing %v, interfaces %v", ep.ID, ep.Containers, ep.Enforcing, ep.Interfaces)
			}
			for _, c := range ep.Containers {
				ids = append(ids, c.ID)
			}
			ifaces[ep.Interfaces[0].Ifindex] = true
			for _, a := range ep.Addresses {
				addrs[netip.MustParseAddr(a)] = true
			}
			labelSets[ep.Labels["churn"]] = true
			idents[int(ep.Identity)] = true
		}
		slices.Sort(ids)
		if !slices.Equal(ids, running) {
			return fmt.Errorf("endpoints' containers %d, docker ps %d", len(ids), len(running))
		}
		if got := e.pinnedEndpoints(); !maps.Equal(got, ifaces) {
			return fmt.Errorf("endpoints map %v, endpoints' veths %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(ifaces)))
		}
		if got := e.pinnedLinks(); !maps.Equal(got, ifaces) {
			return fmt.Errorf("pinned links of %v, endpoints' veths %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(ifaces)))
		}
		got := e.pinnedIPCache(subnet)
		delete(got, gateway)
		if !maps.Equal(got, addrs) {
			return fmt.Errorf("ipcache in %v: %v, endpoints' addresses %v", subnet, slices.SortedFunc(maps.Keys(got), netip.Addr.Compare), slices.SortedFunc(maps.Keys(addrs), netip.Addr.Compare))
		}
		if got := e.pinnedKeys("membrane_policy"); !maps.Equal(got, idents) {
			return fmt.Errorf("policy map's identities %v, endpoints' %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(idents)))
		}
		all, err := e.client.Identities(context.Background())
		if err != nil {
			return err
		}
		inUse := map[string]bool{}
		for _, id := range all {
			if id.Labels["e2e"] == e.sfx && id.Endpoints > 0 {
				inUse[id.Labels["churn"]] = true
			}
		}
		if !maps.Equal(inUse, labelSets) {
			return fmt.Errorf("identities in use %v, endpoints' label sets %v", slices.Sorted(maps.Keys(inUse)), slices.Sorted(maps.Keys(labelSets)))
		}
		return nil
	})
}

// pinnedEndpoints returns the ifindexes in the pinned endpoints map.
func (e *env) pinnedEndpoints() map[int]bool {
	e.t.Helper()
	return e.pinnedKeys("membrane_endpoints")
}

// pinnedKeys returns the keys of a pinned map keyed by a __u32.
func (e *env) pinnedKeys(name string) map[int]bool {
	e.t.Helper()
	m := e.pinnedMap(name)
	defer m.Close()
	out := map[int]bool{}
	var k uint32
	it := m.Iterate()
	var v []byte
	if m.Type() == ebpf.HashOfMaps || m.Type() == ebpf.ArrayOfMaps {
		var id ebpf.MapID
		for it.Next(&k, &id) {
			out[int(k)] = true
		}
	} else {
		for it.Next(&k, &v) {
			out[int(k)] = true
		}
	}
	if err := it.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// pinnedLinks returns the ifindexes that pinned veth links name
// (MODE_IFINDEX_HOOK).
func (e *env) pinnedLinks() map[int]bool {
	e.t.Helper()
	files, _ := filepath.Glob(filepath.Join(e.pinDir, "links", "*_*_*"))
	out := map[int]bool{}
	for _, f := range files {
		parts := strings.Split(filepath.Base(f), "_")
		if ifx, err := strconv.Atoi(parts[len(parts)-2]); err == nil {
			out[ifx] = true
		}
	}
	return out
}

// pinnedIPCache returns the full-length IPv4 addresses of the pinned
// ipcache that are inside subnet.
func (e *env) pinnedIPCache(subnet netip.Prefix) map[netip.Addr]bool {
	e.t.Helper()
	m := e.pinnedMap("membrane_ipcache_exact")
	defer m.Close()
	out := map[netip.Addr]bool{}
	var k []byte
	it := m.Iterate()
	for it.Next(&k, new([]byte)) {
		// struct ipcache_key: prefixlen, family, pad[3], addr[16].
		if binary.NativeEndian.Uint32(k) != 64 || k[4] != 4 {
			continue
		}
		if a := netip.AddrFrom4([4]byte(k[8:12])); subnet.Contains(a) {
			out[a] = true
		}
	}
	if err := it.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *env) pinnedMap(name string) *ebpf.Map {
	e.t.Helper()
	pins, _ := filepath.Glob(filepath.Join(e.pinDir, "*", name))
	pins2, _ := filepath.Glob(filepath.Join(e.pinDir, name))
	pins = append(pins2, pins...)
	if len(pins) == 0 {
		e.t.Fatalf("no pinned %s under %s", name, e.pinDir)
	}
	m, err := ebpf.LoadPinnedMap(pins[0], &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}
