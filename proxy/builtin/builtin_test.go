package builtin

import (
	"net"
	"net/netip"
	"testing"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

// loopbackFactory runs the engine in the suite's non-transparent mode: a
// plain loopback listener, every connection sent to the suite's upstream.
func loopbackFactory(t *testing.T, upstream netip.AddrPort) conformance.Target {
	// SO_MARK on the upstream sockets needs CAP_NET_ADMIN.
	testenv.RequireRoot(t)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan proxy.Event, 4096)
	e, err := New(Config{
		Listeners:   []net.Listener{l},
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
	return conformance.Target{Addr: l.Addr().String(), Engine: e, Events: events}
}

func TestConformance(t *testing.T) {
	conformance.Run(t, loopbackFactory)
}
