package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/membrane-fw/membrane/bpf"
	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/daemon/identity"
	"github.com/membrane-fw/membrane/daemon/metrics"
	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/linkwatch"
)

// An endpoint whose veth gets no entry because the endpoints map is full is
// judged as init on it (no entry), so its peers must judge its addresses as
// init too (decision 52), not as the identity its entry would have had.
// When a slot is free again, it is written and its addresses are its
// identity's. The reconciler runs on a real datapath, in a network
// namespace with real veths, without a runtime: the endpoints are given to
// it as a runtime source would.
func TestEndpointsMapFullLeavesAddressesInit(t *testing.T) {
	ns := testenv.NewNetNS(t, "mbd-")
	var ifs [2]int
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range ifs {
		name := testenv.UniqueName("mbe")
		ns.MustExec(t, "ip", "link", "add", name, "type", "veth", "peer", "name", name+"p")
		must(ns.Do(func() error {
			ifc, err := net.InterfaceByName(name)
			if err == nil {
				ifs[i] = ifc.Index
			}
			return err
		}))
	}
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.BPFFSDir = filepath.Join("/sys/fs/bpf", testenv.UniqueName("membrane-test-"))
	var r *reconciler
	must(ns.Do(func() error {
		dp, err := bpf.Open(bpf.Config{PinDir: cfg.BPFFSDir, MaxEndpoints: 1})
		if err != nil {
			return err
		}
		t.Cleanup(func() { ns.Do(dp.Cleanup) })
		ids, err := identity.Open(cfg.StateDir, identity.Options{})
		if err != nil {
			return err
		}
		r = newReconciler(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), dp, ids, endpoint.LabelFilter{}, nil, nil)
		r.metrics = metrics.New(metrics.Sampler{})
		r.synced = true
		return nil
	}))
	addr := [2]netip.Addr{netip.MustParseAddr("10.78.0.2"), netip.MustParseAddr("10.78.0.3")}
	ep := func(i int) endpoint.Endpoint {
		return endpoint.Endpoint{
			ID: []string{"first", "second"}[i], Runtime: endpoint.RuntimeDocker,
			Labels: map[string]string{"app": []string{"a", "b"}[i]},
			Interfaces: []endpoint.Interface{{
				Name: "eth0", HostIfindex: ifs[i], Addrs: []netip.Prefix{netip.PrefixFrom(addr[i], 24)},
			}},
		}
	}
	apply := func(ev endpoint.Event) {
		t.Helper()
		must(ns.Do(func() error {
			r.applyEndpointEvent(ev)
			return nil
		}))
	}
	judged := func(i int) policies.Identity {
		t.Helper()
		ipc, err := r.dp.IPCache()
		must(err)
		return ipc[netip.PrefixFrom(addr[i], 32)]
	}
	// viewed is endpoint id as the API shows it
	viewed := func(id uint32) api.Endpoint {
		t.Helper()
		r.publish()
		for _, e := range r.view.get().endpoints {
			if e.ID == id {
				return e
			}
		}
		t.Fatalf("endpoint %d is not in the view", id)
		return api.Endpoint{}
	}
	for i := range ifs {
		r.veths[ifs[i]] = linkwatch.Event{Type: linkwatch.Added, Ifindex: ifs[i]}
		apply(endpoint.Event{Type: endpoint.Added, Endpoint: ep(i)})
	}
	first, second := r.eps["first"], r.eps["second"]
	if first.identity < policies.FirstAllocated || second.identity < policies.FirstAllocated {
		t.Fatalf("identities %d, %d; want allocated ones", first.identity, second.identity)
	}
	if got := judged(0); got != first.identity {
		t.Errorf("the written endpoint's address is identity %d in the ipcache, want %d", got, first.identity)
	}
	if _, full := r.problems[fmt.Sprintf("endpoint/%d", ifs[1])]; !full {
		t.Fatalf("no problem for the endpoint the full map has no room for: %v", r.problems)
	}
	if got := judged(1); got != policies.IdentityInit {
		t.Errorf("the endpoint without an entry (map full) has its address under identity %d in the ipcache, want init (%d)", got, policies.IdentityInit)
	}
	if e := viewed(second.id); e.Enforcing {
		t.Errorf("the endpoint without an entry is reported as enforcing: %+v", e)
	}

	// A slot is free again: the endpoint is written at once (not at the
	// next full resync), and its address is its identity's.
	apply(endpoint.Event{Type: endpoint.Removed, Endpoint: ep(0)})
	if _, full := r.problems[fmt.Sprintf("endpoint/%d", ifs[1])]; full {
		t.Fatalf("the endpoint is still not written: %v", r.problems)
	}
	if got := judged(1); got != second.identity {
		t.Errorf("once written, the endpoint's address is identity %d in the ipcache, want %d", got, second.identity)
	}
	if e := viewed(second.id); !e.Enforcing {
		t.Errorf("once written, the endpoint is not reported as enforcing: %+v", e)
	}
}
