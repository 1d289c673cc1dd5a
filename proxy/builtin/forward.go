package builtin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"strings"
	"time"
)

// The HTTP/1.x fast path: each client connection owns at most one upstream
// connection (to its original destination, with its source's mark), and the
// handler writes the request and reads the response on it directly. That
// keeps the request on one goroutine (net/http's Transport hands every
// request to two more) and pipelines in order for free. Upgrades and HTTP/2
// go through httputil.ReverseProxy instead.

// dialTimeout bounds an upstream connect of the fast path (whose context
// is not the client's; see forward1).
const dialTimeout = 30 * time.Second

// errAborted says a response broke off after its header was sent; the
// client connection must be aborted (http.ErrAbortHandler).
var errAborted = errors.New("response aborted mid-body")

// upConn is a client connection's upstream connection.
type upConn struct {
	c    net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	dst  netip.AddrPort
	mark uint32
	used bool // served a request before (a failure may be a stale keep-alive)
}

// hopHeaders are the hop-by-hop headers of RFC 9110 section 7.6.1, which a
// proxy does not forward.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopHeaders(h http.Header) {
	for _, f := range h.Values("Connection") {
		for _, name := range strings.Split(f, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, n := range hopHeaders {
		h.Del(n)
	}
}

// fastPath reports whether r can take the direct HTTP/1.x path.
func fastPath(r *http.Request) bool {
	return r.ProtoMajor == 1 && r.Header.Get("Upgrade") == "" && r.Method != http.MethodConnect
}

func (cs *conn) closeUpstream() {
	cs.upMu.Lock()
	if cs.up != nil {
		cs.up.c.Close()
		cs.up = nil
	}
	cs.upMu.Unlock()
}

// forward1 sends r upstream over the connection's own upstream connection
// and copies the response to w. It returns the status written, and the
// upstream error if the request failed before a response began (or
// errAborted if it broke off after).
func (e *Engine) forward1(w http.ResponseWriter, r *http.Request, cs *conn, t *target) (int, error) {
	// A shallow copy with its own header and URL: the handler must not
	// change r, and a deep Clone costs a second header copy.
	out := new(http.Request)
	*out = *r
	out.Header = r.Header.Clone()
	u := *r.URL
	out.URL = &u
	removeHopHeaders(out.Header)
	// The policy already accepted the request, and this proxy answers the
	// client's Expect itself (net/http sends 100 Continue when the body is
	// first read), so the upstream is not asked again.
	out.Header.Del("Expect")
	if _, ok := out.Header["User-Agent"]; !ok {
		// Keep Request.Write from adding Go's default.
		out.Header["User-Agent"] = []string{""}
	}
	if t.path != "" {
		out.URL.Path, out.URL.RawPath = t.path, ""
	}
	out.Close = false
	if r.ContentLength == 0 {
		out.Body = nil
	}
	cs.upMu.Lock()
	defer cs.upMu.Unlock()
	for attempt := 0; ; attempt++ {
		up, err := e.upstreamConn(r.Context(), cs, t)
		if err != nil {
			return 0, err
		}
		resp, err := roundTrip1(up, out)
		if err != nil {
			up.c.Close()
			cs.up = nil
			// A kept-alive upstream connection may have been closed by the
			// server just before this request: retry once on a fresh one,
			// when the request had no body (nothing consumed).
			if up.used && attempt == 0 && out.Body == nil {
				continue
			}
			return 0, err
		}
		up.used = true
		return e.copyResponse(w, resp, cs, up)
	}
}

func (e *Engine) upstreamConn(ctx context.Context, cs *conn, t *target) (*upConn, error) {
	if u := cs.up; u != nil {
		if u.dst == t.dst && u.mark == t.mark {
			return u, nil
		}
		// The source identity (mark) changed with a policy update: a new
		// connection carries the new one.
		u.c.Close()
		cs.up = nil
	}
	// The dial does not end with the request's context: net/http cancels
	// that when the client's read side reaches EOF, which is also what a
	// half-close (shutdown(SHUT_WR)) right after a complete request looks
	// like, and that client still waits for its response. The request
	// goes upstream anyway; a client that really went away shows when its
	// response is written (errAborted). Engine.Close still ends the dial.
	// The timer and the AfterFunc exist only while dialing: a request on a
	// kept-alive upstream connection pays for neither.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dialTimeout)
	stop := context.AfterFunc(e.closing, cancel)
	c, err := e.cfg.Dial(dctx, t.dst, t.mark)
	stop()
	cancel()
	if err != nil {
		return nil, err
	}
	cs.up = &upConn{c: c, r: bufio.NewReaderSize(c, 16<<10), w: bufio.NewWriterSize(c, 16<<10), dst: t.dst, mark: t.mark}
	return cs.up, nil
}

func roundTrip1(u *upConn, out *http.Request) (*http.Response, error) {
	if err := out.Write(u.w); err != nil {
		return nil, fmt.Errorf("writing request upstream: %w", err)
	}
	if err := u.w.Flush(); err != nil {
		return nil, fmt.Errorf("writing request upstream: %w", err)
	}
	for {
		resp, err := http.ReadResponse(u.r, out)
		if err != nil {
			return nil, fmt.Errorf("reading upstream response: %w", err)
		}
		// Interim responses (100, 103) other than 101 are skipped.
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, nil
		}
		resp.Body.Close()
	}
}

// copyResponse writes resp to the client. Bodies without a known length are
// flushed as they arrive, so streams (server-sent events, long polls) flow.
func (e *Engine) copyResponse(w http.ResponseWriter, resp *http.Response, cs *conn, u *upConn) (int, error) {
	defer resp.Body.Close()
	h := w.Header()
	for k, v := range resp.Header {
		h[k] = v
	}
	removeHopHeaders(h)
	announced := make([]string, 0, len(resp.Trailer))
	for k := range resp.Trailer {
		announced = append(announced, k)
	}
	if len(announced) > 0 {
		h["Trailer"] = []string{strings.Join(announced, ", ")}
	}
	w.WriteHeader(resp.StatusCode)
	var err error
	if resp.ContentLength >= 0 {
		_, err = io.Copy(w, resp.Body)
	} else {
		err = copyFlushing(w, resp.Body)
	}
	if err != nil {
		// The client or the upstream went away mid-body: neither
		// connection is in a known state.
		u.c.Close()
		cs.up = nil
		return resp.StatusCode, fmt.Errorf("%w: %w", errAborted, err)
	}
	for k, v := range resp.Trailer {
		h[k] = v
	}
	if resp.Close {
		u.c.Close()
		cs.up = nil
	}
	return resp.StatusCode, nil
}

func copyFlushing(w http.ResponseWriter, r io.Reader) error {
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if ferr := rc.Flush(); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
