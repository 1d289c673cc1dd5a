// Command benchload loads Membrane's datapath with a policy of N entries onto
// two host-side veths for hack/bench.d/bpf.sh, then exits: the pinned
// programs keep enforcing. With -cleanup it removes everything again. Run it
// inside the namespace that holds the veths (ip netns exec).
package main

import (
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/membrane-fw/membrane/bpf"
	"github.com/membrane-fw/membrane/policies"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchload:", err)
		os.Exit(1)
	}
}

func run() error {
	pin := flag.String("pin", "", "pin directory")
	cleanup := flag.Bool("cleanup", false, "remove everything under -pin")
	if0 := flag.String("client-if", "", "host-side veth of the client")
	if1 := flag.String("server-if", "", "host-side veth of the server")
	ip0 := flag.String("client-ip", "", "client address")
	ip1 := flag.String("server-ip", "", "server address")
	port := flag.Uint("port", 5201, "server TCP port")
	n := flag.Int("entries", 1000, "policy entries per endpoint")
	mode := flag.String("attach", "auto", "auto, tcx or tc")
	flag.Parse()
	if *pin == "" {
		return fmt.Errorf("-pin is required")
	}
	if *cleanup {
		return bpf.Cleanup(*pin)
	}
	dp, err := bpf.Open(bpf.Config{PinDir: *pin, Attach: bpf.AttachMode(*mode)})
	if err != nil {
		return err
	}
	defer dp.Close()
	const client, server policies.Identity = 300, 301
	ipc := map[netip.Prefix]policies.Identity{}
	for i, s := range []string{*ip0, *ip1} {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return err
		}
		ipc[netip.PrefixFrom(a, a.BitLen())] = client + policies.Identity(i)
	}
	for i := 0; i < 1000; i++ {
		ipc[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, byte(i / 256), byte(i % 256)}), 32)] = policies.Identity(1000 + i)
	}
	if err := dp.IPCacheSync(ipc); err != nil {
		return err
	}
	mk := func(local, remote policies.Identity, dir policies.Direction) policies.IdentityPolicy {
		ip := policies.IdentityPolicy{Identity: local, IngressDefaultDeny: true, EgressDefaultDeny: true}
		ip.Entries = append(ip.Entries, policies.Entry{Direction: dir, Remote: remote, Proto: policies.ProtoTCP,
			Port: uint16(*port), PortPrefix: 16, RuleID: 1})
		for i := 1; i < *n; i++ {
			ip.Entries = append(ip.Entries, policies.Entry{Direction: dir, Remote: policies.Identity(1000 + i%1000),
				Proto: policies.ProtoTCP, Port: uint16(2000 + i/1000), PortPrefix: 16, RuleID: uint32(i + 1)})
		}
		return ip
	}
	model := &policies.Model{Identities: []policies.IdentityPolicy{
		mk(client, server, policies.Egress), mk(server, client, policies.Ingress),
	}}
	if _, err := dp.SyncPolicy(model, nil); err != nil {
		return err
	}
	for i, name := range []string{*if0, *if1} {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		if err := dp.SetEndpoint(ifc.Index, bpf.Endpoint{ID: uint32(i + 1), Identity: client + policies.Identity(i),
			Flags: bpf.EnforceIngress | bpf.EnforceEgress}); err != nil {
			return err
		}
		if err := dp.Attach(ifc.Index); err != nil {
			return err
		}
	}
	return nil
}
