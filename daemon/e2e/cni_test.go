package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
)

// TestDockerNoneContainerWithCNIInterfaceIsEnforced: Nomad's bridge
// networking starts a pause container with `--network none`, and then its
// CNI plugin puts a veth on the `nomad` bridge into that container's
// namespace, with an address Docker never heard of; the tasks join the
// namespace. Such an endpoint is enforced as soon as its veth appears (not
// at the next recheck, minutes later), with the address its namespace
// holds there as its own: the host reaches the port its policy opens, and
// not another.
func TestDockerNoneContainerWithCNIInterfaceIsEnforced(t *testing.T) {
	sfx0 := fmt.Sprintf("%d", time.Now().UnixNano()%100000)
	br := "mtcni" + sfx0
	e := newEnv(t, envOpts{bridges: []string{br}})
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	// A /24 of this test's own in 10.231/16, as a CNI bridge plugin's.
	subnet := fmt.Sprintf("10.231.%d", 1+int(e.sfx[0])%250)
	ip("link", "add", br, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	ip("addr", "add", subnet+".1/24", "dev", br)
	ip("link", "set", br, "up")
	e.writePolicy("srv.hcl", `
policy "srv" {
  selector = "nomad.group=srv,e2e=SFX"
  ingress {
    from_entities = ["host"]
    ports         = ["8080/tcp"]
  }
}
`)
	e.startDaemon()

	pause := e.run("pause", nil, "sleep 600", "--network", "none")
	pid := e.docker("inspect", "-f", "{{.State.Pid}}", pause)
	e.run("task", []string{"com.hashicorp.nomad.task_group_name=srv"},
		"mkdir -p /www && echo ok > /www/index.html; httpd -p 8080 -h /www; httpd -p 8081 -h /www; sleep 600",
		"--network", "container:"+pause)
	e.eventually("the task joined the pause container's endpoint", 20*time.Second, func() error {
		ep, err := e.client.Endpoint(context.Background(), pause)
		if err != nil || len(ep.Containers) != 2 {
			return fmt.Errorf("%+v %v", ep, err)
		}
		return nil
	})

	// What the CNI bridge plugin does once the sandbox runs.
	veth := "vcni" + sfx0
	ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", "/proc/"+pid+"/ns/net")
	t.Cleanup(func() { exec.Command("ip", "link", "del", veth).Run() })
	ip("link", "set", veth, "master", br, "up")
	addr := subnet + ".2"
	ns := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("nsenter", append([]string{"-t", pid, "-n", "ip"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("nsenter ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	// The plugin's IPAM answers after the veth is in place: the first
	// read of the namespace may find it without an address.
	time.Sleep(300 * time.Millisecond)
	ns("addr", "add", addr+"/24", "dev", "eth0")
	ns("link", "set", "eth0", "up")

	get := func(port string) bool {
		return exec.Command("sh", "-c", fmt.Sprintf("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 1 %s %s 2>/dev/null | grep -q '^ok'", addr, port)).Run() == nil
	}
	// Well before the sources' 5-minute recheck.
	e.eventually("the host reaches the task's 8080 that its policy opens", 15*time.Second, func() error {
		if !get("8080") {
			ep, _ := e.client.Endpoint(context.Background(), pause)
			return fmt.Errorf("no answer; endpoint interfaces %+v addresses %v enforcing %v; drops %s", ep.Interfaces, ep.Addresses, ep.Enforcing, dump(e.observe(api.ObserveFilter{Verdict: "dropped"})))
		}
		return nil
	})
	ep := e.endpoint(pause)
	if len(ep.Addresses) != 1 || ep.Addresses[0] != addr {
		t.Errorf("endpoint addresses %v, want [%s] (the CNI address)", ep.Addresses, addr)
	}
	if get("8081") {
		t.Errorf("the host reached 8081, which no rule opens")
	}
}
