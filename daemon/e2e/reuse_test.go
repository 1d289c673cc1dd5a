package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
)

// TestAddressTakenOverWhileRunningGetsNoneOfTheOldFlows: a client may
// ping app=a and send it HTTP GETs (through the L7 proxy, on 8080) and
// nothing else. It has a ping flow (echo requests of one identifier) and a
// kept-alive HTTP connection (held by the proxy) to a's address when a is
// removed and b, which no policy selects (so its own ingress lets anyone
// in), gets that address. Neither of the client's flows may reach b: they
// were admitted for a, and the client's egress does not allow b. Each
// check waits for the datapath's drop of the old flow's next packet: a
// flow that still passed as a's would leave no drop.
func TestAddressTakenOverWhileRunningGetsNoneOfTheOldFlows(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writePolicy("client.hcl", `
policy "client" {
  selector = "role=client,e2e=SFX"
  egress {
    to_endpoints = ["app=a,e2e=SFX"]
    icmp         = ["echo-request"]
  }
  egress {
    to_endpoints = ["app=a,e2e=SFX"]
    ports        = ["8080/tcp"]
    http {
      method = "GET"
    }
  }
}
`)
	e.startDaemon()
	// Each server answers HTTP with its own name.
	srv := func(name, app string) string {
		return e.run(name, []string{"app=" + app},
			"mkdir -p /var/www; echo server-"+app+" > /var/www/index.html; httpd -f -p 8080 -h /var/www")
	}
	a := srv("a", "a")
	client := e.idle("client", "role=client")
	// b's identity is known before b comes: b's address is all that
	// changes then, no policy is compiled anew.
	e.endpoint(e.idle("b-first", "app=b"))
	e.endpoint(a)
	e.endpoint(client)
	aIP := e.ip(a)

	e.docker("exec", "-d", client, "sh", "-c", "ping -i 0.2 "+aIP+" > /tmp/ping")
	e.eventually("a answers the client's ping", 10*time.Second, func() error {
		b, _ := exec.Command("docker", "exec", client, "cat", "/tmp/ping").CombinedOutput()
		if !strings.Contains(string(b), "seq=") {
			return fmt.Errorf("ping: %q", b)
		}
		return nil
	})
	// A kept-alive HTTP/1.1 connection: each line appended to /tmp/req is
	// sent on it, the responses gather in /tmp/out.
	e.docker("exec", "-d", client, "sh", "-c", "touch /tmp/req; tail -f /tmp/req | nc "+aIP+" 8080 > /tmp/out")
	request := func() {
		e.docker("exec", client, "sh", "-c", `printf 'GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n' >> /tmp/req`)
	}
	out := func() string {
		b, _ := exec.Command("docker", "exec", client, "cat", "/tmp/out").CombinedOutput()
		return string(b)
	}
	request()
	e.eventually("first request answered by a", 10*time.Second, func() error {
		if !strings.Contains(out(), "server-a") {
			return fmt.Errorf("out %q", out())
		}
		return nil
	})

	e.docker("rm", "-f", a)
	b := srv("b", "b")
	if got := e.ip(b); got != aIP {
		t.Fatalf("b got %s, not a's %s", got, aIP)
	}
	e.endpoint(b)
	request()

	dropped := func(proto string) error {
		for _, f := range e.observe(api.ObserveFilter{Container: client, Verdict: "dropped"}) {
			if f.Dest.IP == aIP && f.Protocol == proto {
				return nil
			}
		}
		return fmt.Errorf("no drop of the client's %s flow to %s yet", proto, aIP)
	}
	e.eventually("client's ping to the taken-over address dropped", 10*time.Second, func() error { return dropped("icmp") })
	e.eventually("client's kept-alive HTTP connection to the taken-over address dropped", 10*time.Second, func() error { return dropped("tcp") })
	if o := out(); strings.Contains(o, "server-b") {
		t.Errorf("b answered a request of the client's connection to a:\n%s", o)
	}
	for _, f := range e.observe(api.ObserveFilter{Type: api.FlowL7, Container: client}) {
		if f.Verdict == "forwarded" && f.Dest.IP == aIP && f.Dest.Labels["app"] == "b" {
			t.Errorf("the proxy forwarded a request of the client's connection to b: %s", dump(f))
		}
	}
}
