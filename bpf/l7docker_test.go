package bpf

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/builtin"
)

func dockerOut(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestL7RedirectPublishedPort is the L7 path for a client outside the host
// that reaches a real Docker container through a published port (Docker's
// DNAT): a busybox httpd on docker0 with an ingress L7 policy for world;
// the proxy runs in the host namespace, as membraned does. The "outside" is
// a namespace routed to the host through a veth of its own.
func TestL7RedirectPublishedPort(t *testing.T) {
	img := testenv.BusyboxImage(t)
	name := testenv.UniqueName("mbl7-")
	hostPort := 20000 + rand.IntN(20000)
	dockerOut(t, "run", "-d", "--name", name, "-p", fmt.Sprintf("%d:80", hostPort), img, "sh", "-c",
		"mkdir -p /www/allowed && echo yes > /www/allowed/x && echo no > /www/secret && exec httpd -f -p 80 -h /www")
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", name).Run() })
	iflink, err := strconv.Atoi(dockerOut(t, "exec", name, "cat", "/sys/class/net/eth0/iflink"))
	must(t, err)
	ctrIP := netip.MustParseAddr(dockerOut(t, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name))
	bridge, err := BridgeOf(iflink)
	must(t, err)
	br, err := netlink.LinkByIndex(bridge)
	must(t, err)
	accept := "/proc/sys/net/ipv4/conf/" + br.Attrs().Name + "/accept_local"
	if old, err := os.ReadFile(accept); err == nil {
		t.Cleanup(func() { os.WriteFile(accept, old, 0o644) })
	}

	// The outside: 10.199.N.2 behind a veth whose host end is 10.199.N.1.
	outside := testenv.NewNetNS(t, "mbout-")
	n := rand.IntN(250) + 1
	hostEnd := testenv.UniqueName("mbo")
	hostAddr := fmt.Sprintf("10.199.%d.1", n)
	if out, err := exec.Command("ip", "link", "add", hostEnd, "type", "veth", "peer", "name", "eth0", "netns", outside.Name).CombinedOutput(); err != nil {
		t.Fatalf("veth: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostEnd).Run() })
	for _, c := range [][]string{
		{"ip", "addr", "add", hostAddr + "/30", "dev", hostEnd}, {"ip", "link", "set", hostEnd, "up"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
	}
	outside.MustExec(t, "ip", "addr", "add", fmt.Sprintf("10.199.%d.2/30", n), "dev", "eth0")
	outside.MustExec(t, "ip", "link", "set", "eth0", "up")
	outside.MustExec(t, "ip", "route", "add", "default", "via", hostAddr)

	// The proxy in the host namespace, with routing of its own table so
	// that it never touches a daemon's.
	ls, err := proxy.ListenTransparent(context.Background(), 0)
	must(t, err)
	rt := proxy.Routing{Mark: proxy.MarkMagicToProxy, Mask: proxy.MarkMagicMask, Table: 2100 + rand.IntN(800), Priority: 8999}
	must(t, rt.Install(nil))
	t.Cleanup(func() { rt.Remove(nil) })
	// The host settings the published-port path needs (PrepareProxyPath
	// says why); the test puts tcp_early_demux back.
	demux := "/proc/sys/net/ipv4/tcp_early_demux"
	if old, err := os.ReadFile(demux); err == nil {
		t.Cleanup(func() { os.WriteFile(demux, old, 0o644) })
	}
	must(t, PrepareProxyPath(selfCgroupOrZero(t))) // as the daemon does
	must(t, PrepareProxyPath(selfCgroupOrZero(t))) // idempotent
	t.Cleanup(func() {
		if err := RemoveProxyPath(); err != nil {
			t.Errorf("RemoveProxyPath: %v", err)
		}
	})
	const idCtr policies.Identity = 900
	model := &policies.Model{
		Identities: []policies.IdentityPolicy{{Identity: idCtr, IngressDefaultDeny: true, Entries: []policies.Entry{
			{Direction: policies.Ingress, Remote: policies.IdentityWorld, Proto: policies.ProtoTCP, Port: 80, PortPrefix: 16, L7: 1, RuleID: 1},
		}}},
		L7: map[uint32]policies.L7Set{1: {Rules: []policies.L7Rule{{RuleID: 1, HTTP: policies.HTTPRule{
			Method: regexp.MustCompile("^(?:GET)$"), Path: regexp.MustCompile("^(?:/allowed/.*)$"),
		}}}}},
	}
	ipc := map[netip.Prefix]policies.Identity{netip.PrefixFrom(ctrIP, 32): idCtr}
	eng, err := builtin.New(builtin.Config{Listeners: ls, Resolver: proxy.NewModelResolver(model, ipc, nil)})
	must(t, err)
	t.Cleanup(func() { eng.Close() })

	dp, err := Open(Config{PinDir: testPinDir(t)})
	must(t, err)
	t.Cleanup(func() {
		if err := dp.Cleanup(); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	must(t, dp.SetEndpoint(iflink, Endpoint{ID: 1, Identity: idCtr, Flags: EnforceIngress, Bridge: bridge}))
	must(t, dp.IPCacheSync(ipc))
	_, err = dp.SyncPolicy(model, func(uint32) uint16 { return eng.Port() })
	must(t, err)
	must(t, dp.AttachBridge(bridge))
	must(t, dp.Attach(iflink))

	env := &l7Env{tp: &topo{host: outside}}
	get := func(path string) (string, error) {
		status, body, err := env.get(nil, fmt.Sprintf("http://%s:%d%s", hostAddr, hostPort, path), 5*time.Second)
		if err == nil && status != 200 {
			err = fmt.Errorf("status %d", status)
		}
		return strings.TrimSpace(body), err
	}
	evr, err := dp.NewEventReader()
	must(t, err)
	defer evr.Close()
	deadline := time.Now().Add(10 * time.Second)
	body, err := get("/allowed/x")
	for err != nil && time.Now().Before(deadline) { // docker's port publishing may lag
		time.Sleep(300 * time.Millisecond)
		body, err = get("/allowed/x")
	}
	if err != nil || body != "yes" {
		evr.SetDeadline(time.Now().Add(time.Second))
		for {
			ev, err := evr.Read()
			if err != nil {
				break
			}
			t.Logf("event %+v", ev)
		}
		t.Fatalf("outside -> published port, allowed path: %q %v (counters %+v)", body, err, counterSummary(dp))
	}
	if body, err := get("/secret"); err == nil || !strings.Contains(body+err.Error(), "403") {
		t.Errorf("outside -> published port, denied path: %q %v, want 403", body, err)
	}
	var proxied bool
	var k datapathCtKey
	var v datapathCtEntry
	for it := dp.objs.MembraneCt.Iterate(); it.Next(&k, &v); {
		if int(k.Ifindex) == iflink && v.ProxyPort == eng.Port() {
			proxied = true
		}
	}
	if !proxied {
		t.Errorf("no conntrack entry at the container's veth with the proxy port")
	}

}

func counterSummary(dp *Datapath) map[string]uint64 {
	out := map[string]uint64{}
	c, err := dp.Counters()
	if err != nil {
		return out
	}
	for k, v := range c.Verdicts {
		out[fmt.Sprintf("%v/%v", k.Reason, k.Direction)] += v.Packets
	}
	return out
}
