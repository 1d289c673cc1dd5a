package builtin

import (
	"net"
	"net/netip"
	"testing"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

// loopbackEngine starts the engine on a plain loopback listener (the
// suite's non-transparent mode) with every connection sent to upstream; its
// events go to a channel of n (dropped when full).
func loopbackEngine(t *testing.T, upstream netip.AddrPort, r proxy.Resolver, n int) (*Engine, string, chan proxy.Event) {
	t.Helper()
	// SO_MARK on the upstream sockets needs CAP_NET_ADMIN.
	testenv.RequireRoot(t)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan proxy.Event, n)
	e, err := New(Config{
		Listeners:   []net.Listener{l},
		Resolver:    r,
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return upstream, nil },
		Events: func(ev proxy.Event) {
			select {
			case events <- ev:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, l.Addr().String(), events
}

func loopbackFactory(t *testing.T, upstream netip.AddrPort) conformance.Target {
	e, addr, events := loopbackEngine(t, upstream, nil, 4096)
	return conformance.Target{Addr: addr, Engine: e, Events: events}
}

func TestConformance(t *testing.T) {
	conformance.Run(t, loopbackFactory)
}
