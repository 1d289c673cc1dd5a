package builtin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// errClientGone ends a request whose client connection (or the engine)
// closed before its upstream transport could be had.
var errClientGone = errors.New("the client connection closed")

// h2Upstream is the upstream side of one HTTP/2 client connection: its
// own transports, one for each mark it sent requests with (normally one:
// a connection's source identity changes only with the policy), so that
// no upstream connection serves two client connections, as the HTTP/1
// loop has it. A server that keys state or authentication by connection
// would otherwise serve one client's requests as another's of the same
// identity. Its connections close with the client's (close).
type h2Upstream struct {
	e *Engine

	mu         sync.Mutex
	closed     bool
	registered bool // in e.h2ups, for Close
	transports map[uint32]*http.Transport
	conns      map[*h2UpConn]struct{}
}

// transport returns the transport of mark, made at its first request.
func (u *h2Upstream) transport(mark uint32) (*http.Transport, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, errClientGone
	}
	if t, ok := u.transports[mark]; ok {
		return t, nil
	}
	if !u.registered {
		if !u.e.trackUpstream(u) {
			return nil, errClientGone
		}
		u.registered = true
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, fmt.Errorf("upstream address %q: %w", addr, err)
		}
		c, err := u.e.cfg.Dial(ctx, ap, mark)
		if err != nil {
			return nil, err
		}
		return u.add(c)
	}
	var p2 http.Protocols
	p2.SetUnencryptedHTTP2(true)
	t := &http.Transport{
		DialContext: dial, Protocols: &p2,
		IdleConnTimeout: 90 * time.Second, DisableCompression: true,
		// One dial at a time: the first streams of a client connection,
		// coming together, share the connection being dialed instead of
		// each dialing its own (for HTTP/2 it bounds dials in progress,
		// not connections: more come when the upstream's stream limit is
		// reached).
		MaxConnsPerHost: 1,
		// As the HTTP/1 loop bounds a response head (Go's default is
		// 10 MB a stream).
		MaxResponseHeaderBytes: maxResponseHead,
		// What an upstream sends for a stream whose client does not read
		// waits here up to the stream's window, and the connection's
		// window bounds it for all its streams: Go's defaults are 4 MiB a
		// stream and 1 GiB a connection, 250 MiB for a client connection
		// with 250 streams open.
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerStream:     upstreamStreamWindow,
			MaxReceiveBufferPerConnection: upstreamConnWindow,
			MaxReadFrameSize:              h2MaxFrame,
		},
	}
	if u.transports == nil {
		u.transports = map[uint32]*http.Transport{}
	}
	u.transports[mark] = t
	return t, nil
}

// add registers a dialed connection, or closes it when the client
// connection closed while it was dialed.
func (u *h2Upstream) add(c net.Conn) (net.Conn, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		c.Close()
		return nil, errClientGone
	}
	uc := &h2UpConn{Conn: c, u: u}
	if u.conns == nil {
		u.conns = map[*h2UpConn]struct{}{}
	}
	u.conns[uc] = struct{}{}
	return uc, nil
}

// close closes every upstream connection of the client connection, idle
// or not (its streams ended with it), and any dialed after.
func (u *h2Upstream) close() {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return
	}
	u.closed = true
	conns, transports, registered := u.conns, u.transports, u.registered
	u.conns = nil
	u.mu.Unlock()
	if registered {
		u.e.untrackUpstream(u)
	}
	for c := range conns {
		c.Conn.Close()
	}
	for _, t := range transports {
		t.CloseIdleConnections()
	}
}

// h2UpConn is an upstream connection of an h2Upstream, which forgets it
// when it closes.
type h2UpConn struct {
	net.Conn
	u *h2Upstream
}

func (c *h2UpConn) Close() error {
	c.u.mu.Lock()
	delete(c.u.conns, c)
	c.u.mu.Unlock()
	return c.Conn.Close()
}

// trackUpstream registers u for Close; false when closing.
func (e *Engine) trackUpstream(u *h2Upstream) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.h2ups[u] = struct{}{}
	return true
}

func (e *Engine) untrackUpstream(u *h2Upstream) {
	e.mu.Lock()
	delete(e.h2ups, u)
	e.mu.Unlock()
}
