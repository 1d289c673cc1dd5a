package bpf

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
)

// acceptServer listens on addr in namespace c and hands every accepted
// connection to the test, which speaks on it first when it wants to.
func acceptServer(t *testing.T, c *testenv.NetNS, addr string) <-chan net.Conn {
	var ln net.Listener
	must(t, c.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}))
	t.Cleanup(func() { ln.Close() })
	ch := make(chan net.Conn, 4)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { conn.Close() })
			ch <- conn
		}
	}()
	return ch
}

// tcpPair is an established connection: the client's end and the server's.
type tcpPair struct{ client, server net.Conn }

func connectPair(t *testing.T, c *testenv.NetNS, addr string, accepted <-chan net.Conn) tcpPair {
	t.Helper()
	client, err := dial(c, "tcp", addr, allowTimeout)
	if err != nil {
		t.Fatalf("connecting to %s: %v", addr, err)
	}
	t.Cleanup(func() { client.Close() })
	select {
	case server := <-accepted:
		return tcpPair{client, server}
	case <-time.After(allowTimeout):
		t.Fatalf("%s: the server accepted nothing", addr)
		return tcpPair{}
	}
}

// say writes a line on from and reads it on to.
func say(from, to net.Conn, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	from.SetDeadline(deadline)
	to.SetDeadline(deadline)
	if _, err := fmt.Fprintf(from, "hello\n"); err != nil {
		return err
	}
	buf := make([]byte, 6)
	n, err := to.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "hello\n" {
		return fmt.Errorf("got %q", buf[:n])
	}
	return nil
}

// TestEnforcementSwitchJudgesTrackedConnections switches the daemon's
// enforcement between "never" (the flags the daemon gives an endpoint then,
// and the empty model of decision 31) and "default" under connections that
// stay open, and checks that they are judged as connections, not as new
// flows: opened under "never", a connection the enforcing policy allows its
// initiator keeps its replies, even when its next packet is one (the server
// speaks first), and one the policy denies is cut, as a policy change cuts it
// (decision 75). Audit mode ending is checked the same way.
func TestEnforcementSwitchJudgesTrackedConnections(t *testing.T) {
	tp := newTopo(t)
	pinDir := testPinDir(t)
	dp, err := Open(Config{PinDir: pinDir})
	must(t, err)
	t.Cleanup(func() {
		if err := tp.host.Do(func() error { return dp.Cleanup() }); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	must(t, dp.IPCacheSync(tp.identities()))
	// the endpoints as the daemon writes them under env
	setFlags := func(env *policies.Env) {
		t.Helper()
		must(t, dp.SetEndpoint(tp.hostIf[0], Endpoint{ID: 1, Identity: idA, Flags: endpointFlags(env, policies.Labels{"app": "a"})}))
		must(t, dp.SetEndpoint(tp.hostIf[1], Endpoint{ID: 2, Identity: idB, Flags: endpointFlags(env, policies.Labels{"app": "b"})}))
	}
	sync := func(m *policies.Model) {
		t.Helper()
		_, err := dp.SyncPolicy(m, nil)
		must(t, err)
	}
	// A may call B on 8080 and 8081, B takes A's calls on 8080 only, and
	// neither takes anything else: A's ingress and B's egress are in
	// default-deny with no entries, so a reply judged as a new flow drops.
	enforcing := func(audit bool) *policies.Model {
		return &policies.Model{Identities: []policies.IdentityPolicy{
			{Identity: idA, IngressDefaultDeny: true, EgressDefaultDeny: true, Audit: audit, Entries: []policies.Entry{
				entry(out, idB, policies.ProtoTCP, 8080, 15, policies.Allow, 1), // 8080-8081
			}},
			{Identity: idB, IngressDefaultDeny: true, EgressDefaultDeny: true, Audit: audit, Entries: []policies.Entry{
				entry(in, idA, policies.ProtoTCP, 8080, 16, policies.Allow, 2),
			}},
		}}
	}
	never := &policies.Model{}
	envNever := &policies.Env{Enforcement: policies.EnforcementNever}
	envDefault := &policies.Env{Enforcement: policies.EnforcementDefault}
	envAudit := &policies.Env{Enforcement: policies.EnforcementDefault, Audit: true}

	setFlags(envNever)
	sync(never)
	tp.attach(t, dp)
	b := tp.addr[1].String()
	s8080 := acceptServer(t, tp.c[1], ":8080")
	s8081 := acceptServer(t, tp.c[1], ":8081")

	// check: the allowed connection works both ways, its server speaking
	// first; the denied one carries nothing either way.
	check := func(t *testing.T, when string, keep, cut tcpPair) {
		t.Helper()
		if err := say(keep.server, keep.client, allowTimeout); err != nil {
			t.Errorf("%s: the server's data on the allowed connection did not reach the client: %v", when, err)
		}
		if err := say(keep.client, keep.server, allowTimeout); err != nil {
			t.Errorf("%s: the client's data on the allowed connection did not reach the server: %v", when, err)
		}
		if err := say(cut.server, cut.client, denyTimeout); err == nil {
			t.Errorf("%s: the server's data on a connection the policy denies reached the client", when)
		}
		if err := say(cut.client, cut.server, denyTimeout); err == nil {
			t.Errorf("%s: the client's data on a connection the policy denies reached the server", when)
		}
	}

	t.Run("never to default", func(t *testing.T) {
		keep := connectPair(t, tp.c[0], b+":8080", s8080)
		cut := connectPair(t, tp.c[0], b+":8081", s8081)
		must(t, say(keep.client, keep.server, allowTimeout))
		must(t, say(cut.client, cut.server, allowTimeout))
		// The daemon restarted into "default": it writes the endpoints,
		// then the model.
		setFlags(envDefault)
		sync(enforcing(false))
		check(t, "after the switch to enforcing", keep, cut)
		if err := canTCP(tp.c[0], b+":8081", denyTimeout); err == nil {
			t.Errorf("a new connection the policy denies connected")
		}
	})

	t.Run("default to never", func(t *testing.T) {
		keep := connectPair(t, tp.c[0], b+":8080", s8080)
		must(t, say(keep.client, keep.server, allowTimeout))
		sync(never)
		setFlags(envNever)
		if err := say(keep.server, keep.client, allowTimeout); err != nil {
			t.Errorf("after the switch to never: %v", err)
		}
		opened := connectPair(t, tp.c[0], b+":8081", s8081)
		if err := say(opened.server, opened.client, allowTimeout); err != nil {
			t.Errorf("after the switch to never, a connection the old policy denied: %v", err)
		}
		// and back, with a connection opened under "never"
		cut := connectPair(t, tp.c[0], b+":8081", s8081)
		must(t, say(cut.client, cut.server, allowTimeout))
		sync(enforcing(false))
		setFlags(envDefault)
		check(t, "after the switch back to enforcing", keep, cut)
	})

	t.Run("audit to enforcing", func(t *testing.T) {
		setFlags(envAudit)
		sync(enforcing(true))
		keep := connectPair(t, tp.c[0], b+":8080", s8080)
		cut := connectPair(t, tp.c[0], b+":8081", s8081)
		must(t, say(keep.client, keep.server, allowTimeout))
		must(t, say(cut.client, cut.server, allowTimeout)) // audited
		setFlags(envDefault)
		sync(enforcing(false))
		check(t, "after audit mode ended", keep, cut)
	})
}
