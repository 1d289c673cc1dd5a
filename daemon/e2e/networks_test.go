package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestEveryInterfaceOfAnEndpointIsEnforced: srv, on the test's network,
// is connected to a second network created after membraned started;
// from then on its ingress (app=good only) holds on both interfaces at
// once, also after a pause and unpause and a restart (new veths, maybe
// new addresses), and a disconnect leaves it one interface and takes
// the other's address from it.
func TestEveryInterfaceOfAnEndpointIsEnforced(t *testing.T) {
	e := newEnv(t, envOpts{laterNetworks: []string{"l"}})
	e.writePolicy("srv.hcl", `
policy "srv" {
  selector = "app=srv,e2e=SFX"
  ingress {
    from_endpoints = ["app=good,e2e=SFX"]
    ports          = ["8080/tcp"]
  }
}
`)
	e.startDaemon()
	srv := e.run("srv", []string{"app=srv"}, "echo ok > /var/www/index.html; httpd -f -p 8080 -h /var/www")
	id := e.endpoint(srv).Identity
	net2 := e.createNetwork("l")
	good := e.run("good", []string{"app=good"}, "sleep 600", "--network", net2)
	bad := e.run("bad", []string{"app=bad"}, "sleep 600", "--network", net2)
	goodMain := e.idle("goodmain", "app=good")
	badMain := e.idle("badmain", "app=bad")
	for _, c := range []string{good, bad, goodMain, badMain} {
		e.endpoint(c)
	}
	ipOn := func(network string) string {
		t.Helper()
		return e.docker("inspect", "-f", `{{with index .NetworkSettings.Networks "`+network+`"}}{{.IPAddress}}{{end}}`, srv)
	}
	// twoInterfaces waits until srv is enforced on an interface on each
	// network, with its address there, and returns the addresses.
	twoInterfaces := func(when string) (main, second string) {
		t.Helper()
		e.eventually(when+": srv enforced on both networks", 20*time.Second, func() error {
			main, second = ipOn(e.network), ipOn(net2)
			ep := e.endpoint(srv)
			var nets []string
			for _, itf := range ep.Interfaces {
				nets = append(nets, itf.Network)
			}
			slices.Sort(nets)
			if want := []string{e.network, net2}; !slices.Equal(nets, want) || main == "" || second == "" {
				return fmt.Errorf("interfaces on %v (want %v), addresses %q %q", nets, want, main, second)
			}
			if !slices.Contains(ep.Addresses, main) || !slices.Contains(ep.Addresses, second) {
				return fmt.Errorf("addresses %v, want %s and %s", ep.Addresses, main, second)
			}
			return nil
		})
		if got := e.endpoint(srv).Identity; got != id {
			t.Errorf("%s: srv identity %d -> %d", when, id, got)
		}
		return main, second
	}
	check := func(when, main, second string) {
		t.Helper()
		e.eventually(when+": good reaches srv on the second network", 10*time.Second, func() error {
			if !e.get(good, second) {
				return fmt.Errorf("no answer")
			}
			return nil
		})
		if !e.get(goodMain, main) {
			t.Errorf("%s: good does not reach srv on the first network", when)
		}
		if e.get(bad, second) {
			t.Errorf("%s: bad reaches srv on the second network", when)
		}
		if e.get(badMain, main) {
			t.Errorf("%s: bad reaches srv on the first network", when)
		}
	}

	e.docker("network", "connect", net2, srv)
	main, second := twoInterfaces("connected")
	check("connected", main, second)

	e.docker("pause", srv)
	e.docker("unpause", srv)
	main, second = twoInterfaces("unpaused")
	check("unpaused", main, second)

	before := e.endpoint(srv).Interfaces
	e.docker("restart", "-t", "0", srv)
	e.eventually("srv's new veths", 20*time.Second, func() error {
		for _, itf := range e.endpoint(srv).Interfaces {
			for _, old := range before {
				if itf.Ifindex == old.Ifindex {
					return fmt.Errorf("still veth %d", old.Ifindex)
				}
			}
		}
		return nil
	})
	main, second = twoInterfaces("restarted")
	check("restarted", main, second)

	e.docker("network", "disconnect", net2, srv)
	e.eventually("srv on one interface after the disconnect", 20*time.Second, func() error {
		ep := e.endpoint(srv)
		if len(ep.Interfaces) != 1 || ep.Interfaces[0].Network != e.network || slices.Contains(ep.Addresses, second) {
			return fmt.Errorf("interfaces %s, addresses %v", dump(ep.Interfaces), ep.Addresses)
		}
		return nil
	})
	if !e.get(goodMain, main) || e.get(badMain, main) {
		t.Errorf("after the disconnect srv's ingress does not hold on the first network")
	}
	st, err := e.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Errors) > 0 {
		t.Errorf("status problems: %q", st.Errors)
	}
}
