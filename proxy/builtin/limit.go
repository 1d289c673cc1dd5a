package builtin

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Why a connection was refused (the reason label of
// membrane_proxy_connections_refused_total).
const (
	refusedTotal     = "max_connections"
	refusedPerSource = "max_connections_per_source"
	refusedDirect    = "direct"
)

// direct reports whether a connection came to the proxy's port itself
// rather than through the datapath's redirect: its original destination
// is the proxy port on an address of this host (the listeners take the
// wildcard address, so anyone who can reach the host may connect). Serving
// it would dial that destination, the proxy, again, and again, until the
// connection limits. A redirected connection's destination is a container's
// address, or a host address on another port: no host service can listen
// on the proxy's port.
func (e *Engine) direct(dst netip.AddrPort) bool {
	if dst.Port() != e.port {
		return false
	}
	a := dst.Addr().Unmap()
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true // cannot tell: refuse rather than risk the loop
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if h, ok := netip.AddrFromSlice(n.IP); ok && h.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// limiter bounds the client connections the engine holds open, in all and
// per source address, so that no client, and no container in particular,
// can take all of membraned's file descriptors and memory, or every slot
// of the proxy that its neighbours need.
type limiter struct {
	max, perSource int // < 0: no bound

	mu       sync.Mutex
	total    int
	bySource map[netip.Addr]int
}

func newLimiter(max, perSource int) *limiter {
	return &limiter{max: max, perSource: perSource, bySource: map[netip.Addr]int{}}
}

// admit takes a slot for a connection from src; reason is why not ("" when
// taken). Every admitted connection is released exactly once.
func (l *limiter) admit(src netip.Addr) (reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.max >= 0 && l.total >= l.max:
		return refusedTotal
	case l.perSource >= 0 && l.bySource[src] >= l.perSource:
		return refusedPerSource
	}
	l.total++
	l.bySource[src]++
	return ""
}

func (l *limiter) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if n := l.bySource[src] - 1; n > 0 {
		l.bySource[src] = n
	} else {
		delete(l.bySource, src)
	}
}

// refuse resets a connection the limiter did not admit: the client learns
// at once, and no FIN_WAIT socket lingers for it.
func (e *Engine) refuse(c net.Conn, src netip.AddrPort, reason string) {
	// Counted first: whoever sees the reset sees it counted.
	e.metrics.ConnectionsRefused.WithLabelValues(reason).Inc()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
	// A flood of refusals logs a line per interval, not per connection.
	now := time.Now().UnixNano()
	last := e.lastRefusalLog.Load()
	if now-last >= int64(refusalLogInterval) && e.lastRefusalLog.CompareAndSwap(last, now) {
		switch reason {
		case refusedDirect:
			e.log.Warn("L7 proxy refused a connection made to its own port, not redirected by the datapath",
				"src", src.String(), "port", e.port)
		default:
			limit := e.cfg.MaxConnections
			if reason == refusedPerSource {
				limit = e.cfg.MaxConnectionsPerSource
			}
			e.log.Warn("L7 proxy refused a connection: at its limit (raise it in the l7 block of membrane.hcl)",
				"src", src.String(), "reason", reason, "limit", limit)
		}
	}
}

// refusalLogInterval spaces the warnings of refused connections.
const refusalLogInterval = 10 * time.Second
