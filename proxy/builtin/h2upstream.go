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
		// window bounds it for all its streams (h2Windows): Go's defaults
		// are 4 MiB a stream and 1 GiB a connection, 250 MiB for a client
		// connection with 250 streams open.
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerStream:     int(u.e.windows.upstreamStream),
			MaxReceiveBufferPerConnection: int(u.e.windows.upstreamConn),
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
// when it closes. What it reads passes through a frameSizeClamp.
type h2UpConn struct {
	net.Conn
	u     *h2Upstream
	clamp frameSizeClamp // the transport's read loop's
}

func (c *h2UpConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.clamp.scan(p[:n])
	return n, err
}

// frameSizeClamp rewrites the SETTINGS_MAX_FRAME_SIZE of the SETTINGS
// frames an upstream sends to HTTP/2's least, 16 KiB, as they pass:
// net/http's transport reads a request body ahead into a buffer of the
// server's largest frame, up to 512 KiB a stream (a Go server takes 1 MiB
// frames), which it holds while the server does not take the body, so
// 250 uploads on one client connection held 125 MiB, beyond what the
// windows bound. A server takes every frame size from 16 KiB (HTTP/2's
// initial size) up to the one it announced, so the least is always one
// it takes. It scans every byte of frame headers and of
// SETTINGS frames, and skips other frames' payloads.
type frameSizeClamp struct {
	hdr      [9]byte
	hdrN     int    // bytes of the current frame header seen
	skip     int    // payload bytes of the current frame (not SETTINGS) still to pass
	settings int    // payload bytes of the current SETTINGS frame still to pass
	off      int    // offset in that payload
	id       uint16 // the current setting's identifier
}

// settingMaxFrameSize is SETTINGS_MAX_FRAME_SIZE's identifier (RFC 9113
// section 6.5.2).
const settingMaxFrameSize = 0x5

func (f *frameSizeClamp) scan(b []byte) {
	for len(b) > 0 {
		switch {
		case f.skip > 0:
			n := min(f.skip, len(b))
			f.skip -= n
			b = b[n:]
		case f.settings > 0:
			// A setting is an identifier of 2 bytes and a value of 4.
			switch o := f.off % 6; {
			case o == 0:
				f.id = uint16(b[0])
			case o == 1:
				f.id = f.id<<8 | uint16(b[0])
			case f.id == settingMaxFrameSize:
				b[0] = byte(uint32(h2MaxFrame) >> (8 * (5 - o)))
			}
			f.off++
			f.settings--
			b = b[1:]
		default:
			f.hdr[f.hdrN] = b[0]
			f.hdrN++
			b = b[1:]
			if f.hdrN < len(f.hdr) {
				continue
			}
			f.hdrN = 0
			length := int(f.hdr[0])<<16 | int(f.hdr[1])<<8 | int(f.hdr[2])
			// Type 0x4 is SETTINGS, flag 0x1 its ACK (which has no payload).
			if f.hdr[3] == 0x4 && f.hdr[4]&0x1 == 0 {
				f.settings, f.off = length, 0
			} else {
				f.skip = length
			}
		}
	}
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
