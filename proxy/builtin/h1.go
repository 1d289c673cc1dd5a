package builtin

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
)

// The HTTP/1.x path: one goroutine per client connection reads requests
// with its own parser, judges each, and forwards it on the connection's
// own upstream connection (to its original destination, with its source's
// mark), dialed at the first allowed request and again when the upstream
// closed it. Nothing per request goes through net/http: that keeps a
// request to a few syscalls and one goroutine wake-up per side, and
// pipelined requests are answered in order for free. Responses are
// buffered and flushed when the client has no more requests buffered, and
// within a body whenever the proxy would wait for more of it, so a
// response head and a small body leave in one write, pipelined responses
// leave together, and streams flow. (A pipelined response waits for the
// ones after it that were already requested.)
// A connection that opens with the HTTP/2 preface is handed to net/http's
// HTTP/2 server (ServeHTTP); upgrades (WebSocket) become a byte tunnel
// after the upstream accepts them. CONNECT and other upgrades are refused
// (see refuseRequest).

// Limits of the HTTP/1.x path.
const (
	// dialTimeout bounds an upstream connect (whose context is not the
	// client's: a client's half-close does not cancel its request).
	dialTimeout = 30 * time.Second
	// readHeaderTimeout bounds the arrival of a request head that began.
	readHeaderTimeout = 30 * time.Second
	// maxDrainBytes of an unread request body (a denied upload) are read
	// and dropped to keep the connection; beyond, it is closed.
	maxDrainBytes = 256 << 10
	// maxResponseHead bounds an upstream response head.
	maxResponseHead = 1 << 20
	// maxTrailerBytes bounds a chunked body's trailer section.
	maxTrailerBytes = 64 << 10
	// drainTimeout is how long a closing connection reads what the client
	// still sends, so that the kernel does not reset the connection (and
	// lose the response) for unread data.
	drainTimeout = 500 * time.Millisecond
)

var (
	// errAborted says a response broke off after its head was sent: the
	// client connection is closed.
	errAborted = errors.New("response aborted mid-body")
	// errMalformedChunk is a chunked body that does not parse.
	errMalformedChunk = errors.New("malformed chunked body")
	errBadResponse    = errors.New("malformed upstream response")
	// errConnect: CONNECT is refused whatever the rules (HTTP/1 and 2).
	errConnect = errors.New(policies.HTTPConnectRefused)
)

// readErr is an error reading the source of a copy (as opposed to writing
// its destination).
type readErr struct {
	err        error
	fromClient bool // the client's request body (else the upstream's response)
}

func (e readErr) Error() string { return e.err.Error() }
func (e readErr) Unwrap() error { return e.err }

var copyBufs = sync.Pool{New: func() any { return new([32 << 10]byte) }}

// Buffers of connections, reused: a new connection costs no 20 KiB of
// garbage.
var (
	readers4k = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	readers8k = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 8<<10) }}
	writers4k = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

func getReader(p *sync.Pool, r io.Reader) *bufio.Reader {
	br := p.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func getWriter(w io.Writer) *bufio.Writer {
	bw := writers4k.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

func putReader(p *sync.Pool, br *bufio.Reader) {
	br.Reset(nil)
	p.Put(br)
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	writers4k.Put(bw)
}

// upConn is a client connection's upstream connection.
type upConn struct {
	c  net.Conn
	rw io.ReadWriter
	// r and w are nil while the connection idles between requests (park).
	r    *bufio.Reader
	w    *bufio.Writer
	dst  netip.AddrPort
	mark uint32
	used bool // served a request before (a failure may be a stale keep-alive)

	head []byte // the current response head
	resp response
}

// request is the parsed head of the current request; spans index h1.head.
type request struct {
	method, target span
	minor          int // HTTP/1.minor
	fields         []field
	host           span
	hosts          int
	contentLength  int64 // -1: none
	chunked        bool
	closeConn      bool // Connection: close
	keepAlive      bool // Connection: keep-alive (HTTP/1.0)
	connUpgrade    bool // Connection: upgrade
	expect100      bool
	upgrade        span // the Upgrade field's value
	connTokens     []span
}

func (rq *request) hasBody() bool { return rq.chunked || rq.contentLength > 0 }

// response is the parsed head of an upstream response; spans index
// upConn.head.
type response struct {
	minor         int
	status        int
	statusRest    span // "200 OK": the status line after the version
	fields        []field
	contentLength int64
	chunked       bool // chunked is the final transfer coding
	te            bool // a Transfer-Encoding field came
	closeConn     bool
	keepAlive     bool
	connTokens    []span
}

// h1 is one HTTP/1.x client connection.
type h1 struct {
	e  *Engine
	cs *conn
	c  net.Conn
	rw io.ReadWriter
	br *bufio.Reader
	bw *bufio.Writer // nil while waiting for a request (readHead)

	up atomic.Pointer[upConn] // atomic: Engine.Close closes it from outside

	// marked: the connection carries the refused mark (markRefused).
	marked bool

	head     []byte
	rq       request
	deadline time.Time // the client read deadline in force (zero: none)
	now      time.Time // when the last request finished

	// The stream idle timeout (Config.StreamIdleTimeout) while a request
	// is being served: touch moves the deadlines of both connections
	// (the client's read deadline only while its body is read) to until,
	// at most once per streamSlack.
	exchange, bodyIn bool
	until, nextTouch time.Time

	handedOff bool
	// linger: the client may still be sending what the proxy will not
	// read (a refused body, a bad request); the connection half-closes and
	// drains before it closes (after the request's event is out).
	linger bool

	// What the previous request's target and Host resolved to: a
	// kept-alive client usually repeats them, and then they cost no
	// allocation.
	lastTarget []byte
	lastPath   string
	lastFwd    []byte // nil: forward the target as received
	lastOver   string // Host override of an absolute-form target
	lastHost   []byte
	lastHostM  string
}

func (e *Engine) serveH1(c net.Conn, cs *conn) {
	rw := newRawIO(c)
	h := &h1{e: e, cs: cs, c: c, rw: rw, br: getReader(&readers4k, rw), bw: getWriter(rw), now: time.Now()}
	if r, ok := rw.(*rawIO); ok {
		r.progress = h.touch
	}
	if !e.track(h) {
		c.Close()
		e.connEnded(cs)
		return
	}
	defer func() {
		e.untrack(h)
		if u := h.up.Load(); u != nil {
			h.dropUp(u)
		}
		if !h.handedOff {
			if h.linger {
				h.closeWriteAndDrain()
			} else {
				h.bw.Flush() // a last response (Connection: close)
			}
			c.Close()
			e.connEnded(cs)
			putReader(&readers4k, h.br) // (a handed-off connection reads on from it)
		}
		putWriter(h.bw)
	}()
	// Judged once, before the first request: a connection Docker would
	// not have carried is marked at once, so all that answers it leaves
	// untracked (it gets 403 at each request, which is then judged again
	// only if the policy or the endpoints change).
	if _, err := cs.decide(e.resolver.Load()); err != nil {
		h.markRefused(err)
	}
	for first := true; ; first = false {
		if !h.serveOne(first) {
			return
		}
	}
}

// markRefused puts the refused mark (proxy.MarkRefused) on the client
// connection when err is a refusal for Docker's isolation, once.
func (h *h1) markRefused(err error) {
	if h.marked || proxy.RefusalReason(err) == "" {
		return
	}
	h.marked = true
	if merr := proxy.SetRefused(h.c); merr != nil {
		h.e.log.Debug("marking a refused connection", "src", h.cs.src.String(), "err", merr)
	}
}

// abort closes both connections (Engine.Close).
func (h *h1) abort() {
	h.c.Close()
	if u := h.up.Load(); u != nil {
		u.c.Close()
	}
}

func (h *h1) setDeadline(t time.Time) {
	h.c.SetReadDeadline(t)
	h.deadline = t
}

// touch moves the deadlines of a request being served to a stream idle
// timeout from now, when they last moved more than streamSlack ago: bytes
// are flowing. Outside an exchange it does nothing.
func (h *h1) touch() {
	if !h.exchange {
		return
	}
	now := time.Now()
	if now.Before(h.nextTouch) {
		return
	}
	h.nextTouch = now.Add(h.e.streamSlack)
	h.until = now.Add(h.e.cfg.StreamIdleTimeout)
	h.c.SetWriteDeadline(h.until)
	if h.bodyIn {
		h.setDeadline(h.until)
	}
	if u := h.up.Load(); u != nil {
		u.c.SetDeadline(h.until)
	}
}

// readBody begins (or ends) reading a request body: the client's read
// deadline follows the stream idle timeout meanwhile.
func (h *h1) readBody(on bool) {
	h.bodyIn = on
	if on {
		h.nextTouch = time.Time{}
		h.touch()
	}
}

// noDeadlines clears every deadline of both connections and ends the
// stream idle timeout: the connection leaves the HTTP/1 loop's
// exchanges (a tunnel, or the HTTP/2 server and its own timeouts).
func (h *h1) noDeadlines(u *upConn) {
	h.exchange = false
	h.c.SetDeadline(time.Time{})
	h.deadline = time.Time{}
	if u != nil {
		u.c.SetDeadline(time.Time{})
	}
}

// readHead reads the next request head into h.head and h.rq. ok false
// with a nil error: the client closed or idled out between requests, or
// the connection went to the HTTP/2 server.
func (h *h1) readHead(first bool) (ok bool, err error) {
	idle := h.br.Buffered() == 0
	if idle {
		if err := h.bw.Flush(); err != nil {
			return false, nil
		}
		// Nothing to write until a request comes, and the client may keep
		// the connection idle for minutes: its write buffer and the
		// upstream connection's buffers go back to the pools meanwhile,
		// and its read buffer too (below).
		putWriter(h.bw)
		h.bw = nil
		if u := h.up.Load(); u != nil {
			u.park()
		}
		defer func() { h.bw = getWriter(h.rw) }()
		h.shrink()
	}
	// The idle timeout, moved only when it lags by more than an eighth of
	// it, at most a second (setting a deadline per request costs), or
	// leads by as much (a request body's stream deadline).
	if want := h.now.Add(h.e.cfg.IdleTimeout); h.deadline.IsZero() || want.Sub(h.deadline) > h.e.idleSlack || h.deadline.Sub(want) > h.e.idleSlack {
		h.setDeadline(want)
	}
	if r, ok := h.rw.(*rawIO); ok && idle {
		putReader(&readers4k, h.br)
		err := r.waitReadable()
		h.br = getReader(&readers4k, h.rw)
		if err != nil {
			return false, nil // timeout, reset: nobody to answer
		}
	}
	var preface bool
	h.head, preface, err = readRequestHead(h.br, h.head[:0], &h.rq, h.e.cfg.MaxHeaderBytes, first, func() {
		// The head arrives in pieces: bound how long it may take.
		if want := time.Now().Add(h.e.cfg.headerTimeout); h.deadline.IsZero() || want.Before(h.deadline) {
			h.setDeadline(want)
		}
	})
	switch {
	case preface:
		h.handoff()
		return false, nil
	case err == nil:
		return true, nil
	case errors.As(err, new(*httpError)):
		return false, err
	}
	return false, nil // EOF, reset, timeout: nobody to answer
}

// keepHead is the most of a request head's bytes, and of what was
// derived from its target and Host, that an idle connection keeps for the
// next request; keepFields, the most fields. A larger head (up to
// Config.MaxHeaderBytes) is rare, and without this every idle connection
// that once carried one would keep its buffers.
const (
	keepHead   = 8 << 10
	keepFields = 128
)

// shrink drops the connection's request buffers that a large head grew
// beyond keepHead or keepFields (and the resolved target and Host kept
// from it).
func (h *h1) shrink() {
	if cap(h.head) > keepHead {
		h.head = nil
	}
	if cap(h.rq.fields) > keepFields {
		h.rq.fields = nil
	}
	if cap(h.rq.connTokens) > keepFields {
		h.rq.connTokens = nil
	}
	if cap(h.lastTarget) > keepHead || len(h.lastPath)+len(h.lastFwd)+len(h.lastOver) > keepHead {
		h.lastTarget, h.lastPath, h.lastFwd, h.lastOver = nil, "", nil, ""
	}
	if cap(h.lastHost) > keepHead || len(h.lastHostM) > keepHead {
		h.lastHost, h.lastHostM = nil, ""
	}
}

// serveOne serves one request; false means the connection is done.
func (h *h1) serveOne(first bool) bool {
	ok, err := h.readHead(first)
	if err != nil {
		h.fail(err)
		return false
	}
	if !ok {
		return false
	}
	h.exchange = true
	defer func() { h.exchange, h.bodyIn = false, false }()
	h.touch()
	e, cs, rq := h.e, h.cs, &h.rq
	start := time.Now()
	method := methodString(rq.method.of(h.head))
	if method == http.MethodConnect {
		authority := string(rq.target.of(h.head))
		h.refuseRequest(start, errConnect, proxy.MatchHost(authority), "")
		return false
	}
	if h.upgradeKind() == upgradeOther {
		host, _ := h.matchHost()
		h.refuseRequest(start, fmt.Errorf("upgrade to %q is not proxied (WebSocket only)", rq.upgrade.of(h.head)), host, string(rq.target.of(h.head)))
		return false
	}
	path, fwd, over, err := h.target()
	if err == nil && path == "/*" && len(rq.target.of(h.head)) == 1 {
		if why := policies.HTTPAsteriskTarget(method, "*"); why != "" {
			err = badRequest("invalid request target: " + why)
		}
	}
	var host string
	switch {
	case err != nil:
	case over != "":
		if why := policies.HTTPAmbiguousHost(over); why != "" {
			err = badRequest("invalid host: " + why)
		}
		host = proxy.MatchHost(over)
	default:
		host, err = h.matchHost()
	}
	if err != nil {
		// Recorded: a refused target or host may be someone probing the
		// rules.
		h.fail(err)
		ev := h.eventUndecided(start, method)
		ev.Path = string(rq.target.of(h.head))
		if ev.Host = over; over == "" {
			ev.Host = string(rq.host.of(h.head))
		}
		if policies.HTTPAmbiguousHost(ev.Host) == "" {
			ev.Host = proxy.MatchHost(ev.Host) // else as sent, to show what was refused
		}
		ev.Verdict, ev.Status, ev.Error = proxy.VerdictError, http.StatusBadRequest, err.Error()
		h.finish(&ev, start)
		return false
	}
	box := e.resolver.Load()
	dec, err := cs.decide(box)
	ev := h.event(start, method, &dec)
	ev.Path, ev.Host = path, host
	if err != nil {
		ev.Verdict, ev.Status, ev.Error = proxy.VerdictDenied, http.StatusForbidden, err.Error()
		refused(&ev, err)
		h.markRefused(err)
		keep := h.deny(method, "Access denied by Membrane: "+err.Error())
		h.finish(&ev, start)
		return keep
	}
	hd, err := h.header(&dec)
	// Fields servers take for the method or the path, where a rule judges
	// it: one pass over the names, only for connections whose rules look
	// at either.
	if onMethod, onPath := dec.JudgesMethod(), dec.JudgesPath(); err == nil && (onMethod || onPath) {
		for _, f := range rq.fields {
			fn := f.name.of(h.head)
			var why string
			if onMethod {
				why = policies.HTTPMethodOverride(fn)
			}
			if why == "" && onPath {
				why = policies.HTTPPathOverride(fn)
			}
			if why != "" && h.forwardsField(fn) {
				err = badRequest("invalid header: " + why)
				break
			}
		}
	}
	var req proxy.Request
	if err == nil && dec.JudgesHost() {
		raw := rq.host.of(h.head)
		if over != "" {
			raw = []byte(over)
		}
		if why := policies.HTTPHostCase(raw); why != "" {
			err = badRequest("invalid host: " + why)
			ev.Host = string(raw) // as sent, to show what was refused
		}
		// The hosts servers read before Host, judged by the rules on the
		// host; nothing to copy when the request has no such field.
		for _, f := range rq.fields {
			fn := f.name.of(h.head)
			if xfh, fwd := policies.IsHTTPForwardedHost(fn); err == nil && (xfh || fwd) && h.forwardsField(fn) {
				if why := policies.HTTPForwardedHostAlias(fn); why != "" {
					err = badRequest("invalid header: " + why)
					break
				}
				req.AddForwardedHost(string(fn), string(f.value.of(h.head)))
			}
		}
	}
	if err != nil {
		h.fail(err)
		ev.Verdict, ev.Status, ev.Error = proxy.VerdictError, http.StatusBadRequest, err.Error()
		h.finish(&ev, start)
		return false
	}
	req.Method, req.Path, req.Host, req.Headers = method, path, host, hd
	ruleID, by, allowed := dec.Verdict(&req)
	if by != nil {
		ev.Direction = by.Direction.String()
	}
	if !allowed {
		names := proxy.PolicyNames(box.r, by)
		ev.Verdict, ev.Status, ev.Policy = proxy.VerdictDenied, http.StatusForbidden, strings.Join(names, ",")
		keep := h.deny(method, proxy.DenyText(names, by))
		h.finish(&ev, start)
		return keep
	}
	ev.RuleID = ruleID
	if ruleID != 0 {
		ev.Policy = box.r.PolicyName(ruleID)
	}
	keep := h.forward(&ev, method, fwd, over, cs.dst, proxy.FromProxyMark(dec.SrcIdentity))
	h.finish(&ev, start)
	return keep
}

func (h *h1) finish(ev *proxy.Event, start time.Time) {
	h.now = time.Now()
	ev.Duration = h.now.Sub(start)
	h.e.metrics.Observe(ev)
	if h.e.cfg.Events != nil {
		h.e.cfg.Events(*ev)
	}
}

// header is what the rules of d see of the request's fields: the fields
// they name (canonical names), as net/http would present them to a handler
// (Host and Transfer-Encoding are not among its fields), less those its
// Connection field names: the proxy does not forward them, and a rule
// must not pass a field the server will not get. nil when no rule looks at
// headers; fields no rule names are left out, which no rule can tell. A
// forwarded field that is a named one spelled with other separators is a
// bad request (policies.HTTPFieldAlias).
func (h *h1) header(d *proxy.Decision) (http.Header, error) {
	var hd http.Header
	for i := range d.Checks {
		for j := range d.Checks[i].Rules.Rules {
			for name := range d.Checks[i].Rules.Rules[j].HTTP.Headers {
				if hd == nil {
					hd = make(http.Header, 2)
				}
				if _, done := hd[name]; done || name == "Host" || name == "Transfer-Encoding" {
					continue
				}
				fwd := h.forwardsField([]byte(name))
				for _, f := range h.rq.fields {
					fn := f.name.of(h.head)
					if bytes.EqualFold(fn, []byte(name)) {
						if fwd {
							hd[name] = append(hd[name], string(f.value.of(h.head)))
						}
						continue
					}
					if policies.IsHTTPFieldAlias(fn, name) && h.forwardsField(fn) {
						return nil, badRequest("invalid header: " + policies.HTTPFieldAlias(string(fn), name))
					}
				}
			}
		}
	}
	return hd, nil
}

// forwardsField reports whether a request field named name reaches the
// server (writeRequest): not a hop-by-hop field (Content-Length is
// rewritten with its value, Upgrade kept for a WebSocket upgrade), nor
// one the Connection field names, nor an x-envoy- field Envoy drops from
// client requests (policies.HTTPEnvoyDropped), which neither engine
// judges nor forwards.
func (h *h1) forwardsField(name []byte) bool {
	switch {
	case equalFold(name, "content-length"):
		return true
	case equalFold(name, "upgrade"):
		return h.upgrading()
	case hopByHop(name) || policies.IsHTTPEnvoyDropped(name):
		return false
	}
	return len(h.rq.connTokens) == 0 || !listed(h.head, h.rq.connTokens, name)
}

// target resolves the request target: the path the rules judge (decoded,
// dot segments removed), the target to forward (nil: as received) and,
// for an absolute-form target, the authority that stands for Host.
func (h *h1) target() (path string, fwd []byte, over string, err error) {
	t := h.rq.target.of(h.head)
	if h.lastTarget != nil && bytes.Equal(t, h.lastTarget) {
		return h.lastPath, h.lastFwd, h.lastOver, nil
	}
	switch {
	case len(t) == 1 && t[0] == '*':
		path = proxy.NormalizePath("*")
	case t[0] == '/':
		raw, query := t, []byte(nil)
		if i := bytes.IndexByte(t, '?'); i >= 0 {
			raw, query = t[:i], t[i:]
		}
		decoded := string(raw)
		if bytes.IndexByte(raw, '%') >= 0 {
			u, err := url.ParseRequestURI(string(t))
			if err != nil {
				return "", nil, "", badRequest("invalid request target")
			}
			decoded = u.Path
		}
		if why := policies.HTTPAmbiguousTarget(string(t), decoded); why != "" {
			return "", nil, "", badRequest("invalid request target: " + why)
		}
		path = proxy.NormalizePath(decoded)
		switch {
		case path != decoded:
			// Forwarded as judged: with dot segments resolved.
			fwd = append([]byte((&url.URL{Path: path}).EscapedPath()), query...)
		case routingEscapes(raw):
			// The escapes the rules read as letters or '/' decoded, as a
			// server may route on the raw path (decodeRouting).
			fwd = append(decodeRouting(raw), query...)
		}
	case len(t) > 7 && (equalFold(t[:7], "http://") || len(t) > 8 && equalFold(t[:8], "https://")):
		u, err := url.ParseRequestURI(string(t))
		if err != nil || u.Host == "" {
			return "", nil, "", badRequest("invalid request target")
		}
		if why := policies.HTTPAmbiguousTarget(string(t), u.Path); why != "" {
			return "", nil, "", badRequest("invalid request target: " + why)
		}
		over = u.Host
		path = proxy.NormalizePath(u.Path)
		switch {
		case path != u.Path:
			u.Path, u.RawPath = path, ""
		case routingEscapes(u.RawPath):
			u.RawPath = string(decodeRouting([]byte(u.RawPath)))
		}
		fwd = []byte(u.RequestURI())
	default:
		return "", nil, "", badRequest("invalid request target")
	}
	h.lastTarget = append(h.lastTarget[:0], t...)
	h.lastPath, h.lastFwd, h.lastOver = path, fwd, over
	return path, fwd, over, nil
}

// routingEscapes reports whether a raw path holds an escape that
// decodeRouting decodes.
func routingEscapes[S string | []byte](raw S) bool {
	for i := 0; i+2 < len(raw); i++ {
		if raw[i] == '%' && routingEscape(raw[i+1], raw[i+2]) >= 0 {
			return true
		}
	}
	return false
}

// decodeRouting returns raw (a path as sent, without its query) with the
// escapes of letters, digits, "-._~" and '/' decoded, the others kept: the
// path as the rules judged it, in the form servers route on. Servers that
// route on the raw path (Node's req.url, Express) would read /%61pi/x
// outside /api/, and those that route by segment (Go's ServeMux)
// /api%2Fadmin as one segment; Envoy's normalization forwards the same
// decoding. Decoding these makes no dot segment nor "//" the judged path
// did not have: the caller forwards the normalized path when it had.
func decodeRouting(raw []byte) []byte {
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		if raw[i] == '%' && i+2 < len(raw) {
			if c := routingEscape(raw[i+1], raw[i+2]); c >= 0 {
				out = append(out, byte(c))
				i += 2
				continue
			}
		}
		out = append(out, raw[i])
	}
	return out
}

// routingEscape is the byte an escape %hl stands for when decodeRouting
// decodes it, else -1.
func routingEscape(h, l byte) int {
	hex := func(c byte) int {
		switch {
		case '0' <= c && c <= '9':
			return int(c - '0')
		case 'a' <= c && c <= 'f':
			return int(c-'a') + 10
		case 'A' <= c && c <= 'F':
			return int(c-'A') + 10
		}
		return -1
	}
	a, b := hex(h), hex(l)
	if a < 0 || b < 0 {
		return -1
	}
	c := byte(a<<4 | b)
	if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' || c == '/' {
		return int(c)
	}
	return -1
}

// refuseRequest answers 403 and closes, whatever the rules, for what the proxy
// does not carry: CONNECT (it stands in front of one server, not the way
// to others, and a tunnel would carry requests past the rules to a server
// that answers CONNECT with 2xx and goes on reading HTTP, as a catch-all
// handler does) and upgrades other than WebSocket. Envoy refuses both
// too, and closes.
func (h *h1) refuseRequest(start time.Time, why error, host, path string) {
	ev := h.eventUndecided(start, methodString(h.rq.method.of(h.head)))
	ev.Host, ev.Path = host, path
	ev.Verdict, ev.Status, ev.Error = proxy.VerdictDenied, http.StatusForbidden, why.Error()
	h.respond(ev.Method, http.StatusForbidden, "Access denied by Membrane: "+why.Error()+"\n", true)
	h.linger = true
	h.finish(&ev, start)
}

// event begins the record of the current request: its connection, its
// peers' identities as dec has them, its protocol and method.
func (h *h1) event(start time.Time, method string, dec *proxy.Decision) proxy.Event {
	ev := proxy.Event{
		Time: start, Engine: "builtin", Src: h.cs.src, Dst: h.cs.dst, Proto: "HTTP/1.1", Method: method,
		SrcIdentity: dec.SrcIdentity, DstIdentity: dec.DstIdentity,
	}
	if h.rq.minor == 0 {
		ev.Proto = "HTTP/1.0"
	}
	return ev
}

// eventUndecided is event for a request refused before the rules: the
// identities come from the connection's decision all the same.
func (h *h1) eventUndecided(start time.Time, method string) proxy.Event {
	dec, _ := h.cs.decide(h.e.resolver.Load())
	return h.event(start, method, &dec)
}

// matchHost is the Host field as the rules match it (proxy.MatchHost).
func (h *h1) matchHost() (string, error) {
	raw := h.rq.host.of(h.head)
	if h.lastHost != nil && bytes.Equal(raw, h.lastHost) {
		return h.lastHostM, nil
	}
	host := string(raw)
	if why := policies.HTTPAmbiguousHost(host); why != "" {
		return "", badRequest("invalid host: " + why)
	}
	h.lastHost = append(h.lastHost[:0], raw...)
	h.lastHostM = proxy.MatchHost(host)
	return h.lastHostM, nil
}

// fail answers a request the proxy could not parse and closes.
func (h *h1) fail(err error) {
	var he *httpError
	if !errors.As(err, &he) {
		return
	}
	text := strconv.Itoa(he.status) + " " + http.StatusText(he.status)
	h.bw.WriteString("HTTP/1.1 " + text + "\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n" + text + ": " + he.msg + "\n")
	h.linger = true
}

// closeWriteAndDrain flushes, half-closes, and reads (and drops) what the
// client still sends for a while, so the kernel does not answer that
// unread data with a reset that would destroy the response in flight.
func (h *h1) closeWriteAndDrain() {
	if h.bw.Flush() != nil {
		return
	}
	if cw, ok := h.c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	h.setDeadline(time.Now().Add(drainTimeout))
	io.CopyN(io.Discard, h.br, 4<<20)
}

// writeDate writes a Date field (RFC 9110 section 6.6.1).
func writeDate(w *bufio.Writer) {
	w.WriteString("Date: ")
	w.Write(time.Now().UTC().AppendFormat(w.AvailableBuffer(), http.TimeFormat))
	w.WriteString("\r\n")
}

// respond writes a response of the proxy's own (403, 502) with a text
// body; closing adds Connection: close.
func (h *h1) respond(method string, status int, body string, closing bool) {
	w := h.bw
	if h.rq.minor == 0 {
		w.WriteString("HTTP/1.0 ")
	} else {
		w.WriteString("HTTP/1.1 ")
	}
	w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(status), 10))
	w.WriteString(" " + http.StatusText(status) + "\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: ")
	w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(len(body)), 10))
	w.WriteString("\r\n")
	writeDate(w)
	if closing {
		w.WriteString("Connection: close\r\n")
	} else if h.rq.minor == 0 {
		w.WriteString("Connection: keep-alive\r\n")
	}
	w.WriteString("\r\n")
	if method != http.MethodHead {
		w.WriteString(body)
	}
}

// clientKeepsAlive reports whether the client wants the connection after
// this request.
func (h *h1) clientKeepsAlive() bool {
	return !h.rq.closeConn && (h.rq.minor >= 1 || h.rq.keepAlive)
}

// deny answers 403 without forwarding. An unread request body is then
// read and dropped when small; a large one, or one the client holds back
// for a 100 Continue it will not get, closes the connection.
func (h *h1) deny(method, body string) bool {
	if !strings.HasSuffix(body, "\n") {
		body += "\n"
	}
	keep := h.clientKeepsAlive()
	drain := h.rq.hasBody() && !h.rq.expect100 && (h.rq.chunked || h.rq.contentLength <= maxDrainBytes)
	if h.rq.hasBody() && !drain {
		keep = false
	}
	h.respond(method, http.StatusForbidden, body, !keep)
	if !h.rq.hasBody() {
		return keep
	}
	if !keep {
		h.linger = true
		return false
	}
	// The answer goes first: the client need not finish sending for it.
	if h.bw.Flush() != nil {
		return false
	}
	if !h.drainBody() {
		// Larger than announced: what is still coming must not reset the
		// connection before the client read the answer.
		h.linger = true
		return false
	}
	return true
}

// drainBody reads and drops the request body, up to maxDrainBytes.
func (h *h1) drainBody() bool {
	h.readBody(true)
	defer h.readBody(false)
	w := bufio.NewWriterSize(&limitWriter{n: maxDrainBytes}, 64)
	buf := copyBufs.Get().(*[32 << 10]byte)
	defer copyBufs.Put(buf)
	var err error
	if h.rq.chunked {
		var line []byte
		err = copyChunked(w, h.br, buf[:], &line, false, false)
	} else {
		err = copyN(w, h.br, h.rq.contentLength, buf[:])
	}
	if err == nil {
		err = w.Flush()
	}
	return err == nil
}

type limitWriter struct{ n int }

func (w *limitWriter) Write(b []byte) (int, error) {
	if w.n -= len(b); w.n < 0 {
		return 0, errors.New("body too large to drain")
	}
	return len(b), nil
}

// upstream returns the connection's upstream connection to dst with mark,
// dialing it when there is none (or it was for another mark: the source
// identity changed with a policy update).
func (h *h1) upstream(dst netip.AddrPort, mark uint32) (*upConn, error) {
	if u := h.up.Load(); u != nil {
		if u.dst == dst && u.mark == mark && !u.unsolicited() {
			u.unpark()
			return u, nil
		}
		h.dropUp(u)
	}
	// The dial does not follow the client: a client's half-close after its
	// request is not a cancellation. Engine.Close ends it.
	dctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	stop := context.AfterFunc(h.e.closing, cancel)
	c, err := h.e.cfg.Dial(dctx, dst, mark)
	stop()
	cancel()
	if err != nil {
		return nil, err
	}
	rw := newRawIO(c)
	if r, ok := rw.(*rawIO); ok {
		r.progress = h.touch
	}
	if h.exchange && !h.until.IsZero() {
		c.SetDeadline(h.until)
	}
	u := &upConn{c: c, rw: rw, r: getReader(&readers8k, rw), w: getWriter(rw), dst: dst, mark: mark}
	h.up.Store(u)
	if h.e.closing.Err() != nil {
		// Close ran between the dial and the Store, and missed u.
		c.Close()
	}
	return u, nil
}

// dropUp closes u, the current upstream connection, and frees its buffers.
func (h *h1) dropUp(u *upConn) {
	u.c.Close()
	if h.up.CompareAndSwap(u, nil) {
		u.park()
	}
}

// unsolicited reports whether the server sent something since its last
// response, before the next request was written: bytes that would be read
// as the next request's response (a server that answered a request hidden
// in a body it ignored, say), or its close. The connection is not reused.
func (u *upConn) unsolicited() bool {
	if u.r != nil && u.r.Buffered() > 0 {
		return true
	}
	r, ok := u.rw.(*rawIO)
	return ok && r.readable()
}

// shrink drops the response buffers a rare huge head grew.
func (u *upConn) shrink() {
	if cap(u.head) > 64<<10 {
		u.head = nil
	}
	if cap(u.resp.fields) > keepFields {
		u.resp.fields = nil
	}
	if cap(u.resp.connTokens) > keepFields {
		u.resp.connTokens = nil
	}
}

// park returns u's buffers to the pools while it idles between requests,
// and drops those a huge response head grew.
func (u *upConn) park() {
	u.shrink()
	if u.r == nil || u.r.Buffered() > 0 || u.w.Buffered() > 0 {
		return
	}
	putReader(&readers8k, u.r)
	putWriter(u.w)
	u.r, u.w = nil, nil
}

// unpark gives u buffers again for the next request.
func (u *upConn) unpark() {
	if u.r == nil {
		u.r, u.w = getReader(&readers8k, u.rw), getWriter(u.rw)
	}
}

// forward sends the allowed request upstream and relays the response. It
// fills ev's status and verdict and reports whether the client connection
// goes on.
func (h *h1) forward(ev *proxy.Event, method string, fwd []byte, over string, dst netip.AddrPort, mark uint32) bool {
	rq := &h.rq
	ev.Verdict = proxy.VerdictForwarded
	upgrade := h.upgrading()
	for attempt := 0; ; attempt++ {
		u, err := h.upstream(dst, mark)
		if err != nil {
			return h.upstreamFailed(ev, method, err, !rq.hasBody())
		}
		h.readBody(rq.hasBody())
		err = h.writeRequest(u, method, fwd, over, upgrade)
		h.readBody(false)
		if err == nil {
			err = u.readResponseHead()
		}
		if err != nil {
			h.dropUp(u)
			var re readErr
			if errors.As(err, &re) && re.fromClient {
				// The request body broke off or did not parse.
				ev.Verdict, ev.Error = proxy.VerdictError, re.err.Error()
				if errors.Is(re.err, errMalformedChunk) {
					ev.Status = http.StatusBadRequest
					h.fail(badRequest(re.err.Error()))
				} else {
					ev.Status = 499
				}
				return false
			}
			// A kept-alive upstream connection may have been closed by the
			// server just before this request: retry once on a fresh one
			// when nothing of a body was consumed. The server may also have
			// run the request and broken off after it, so only a method
			// that may run twice is sent again (RFC 9112 9.3.1).
			if u.used && attempt == 0 && !rq.hasBody() && idempotent(method) && !errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return h.upstreamFailed(ev, method, err, !rq.hasBody() || errors.Is(err, errBadResponse) || isReadSide(err))
		}
		u.used = true
		return h.relay(ev, u, method, upgrade)
	}
}

// idempotent reports whether method is one whose request may be sent twice
// with the effect of once (RFC 9110 9.2.2).
func idempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

// isReadSide: the request went out whole (the upstream failed answering),
// so the client connection is still in step.
func isReadSide(err error) bool {
	var re readErr
	return errors.As(err, &re) && !re.fromClient
}

// upstreamFailed answers 502 (or records 499 when the engine is closing).
func (h *h1) upstreamFailed(ev *proxy.Event, method string, err error, inStep bool) bool {
	ev.Verdict, ev.Error = proxy.VerdictError, err.Error()
	if h.e.closing.Err() != nil {
		ev.Status = 499
		return false
	}
	status, text := http.StatusBadGateway, "membrane: upstream unavailable\n"
	if errors.Is(err, os.ErrDeadlineExceeded) {
		status, text = http.StatusGatewayTimeout, "membrane: upstream did not answer in time\n"
		// The client's write deadline ran out with the upstream's: the
		// answer gets a timeout of its own.
		h.nextTouch = time.Time{}
		h.touch()
	}
	ev.Status = status
	h.e.log.Debug("upstream failed", "dst", h.cs.dst.String(), "err", err)
	keep := inStep && h.clientKeepsAlive()
	h.respond(method, status, text, !keep)
	h.linger = !inStep
	return keep
}

// What a request's Upgrade asks (upgradeKind).
const (
	upgradeNone      = iota // no upgrade: no Connection: upgrade, or HTTP/1.0
	upgradeWebSocket        // tunnelled once the server answers 101
	upgradeH2C              // forwarded as a plain request: its streams could not be judged
	upgradeOther            // refused (refuseRequest), as Envoy configured for WebSocket refuses it
)

func (h *h1) upgradeKind() int {
	rq := &h.rq
	if !rq.connUpgrade || rq.minor < 1 || rq.upgrade.empty() {
		return upgradeNone
	}
	n, ws, h2c := 0, false, false
	tokens(rq.upgrade.of(h.head), func(t []byte) {
		n++
		ws, h2c = equalFold(t, "websocket"), equalFold(t, "h2c")
	})
	switch {
	case n == 1 && ws:
		return upgradeWebSocket
	case n == 1 && h2c:
		return upgradeH2C
	}
	return upgradeOther
}

// upgrading reports whether the request is a WebSocket upgrade, the one
// upgrade the proxy tunnels.
func (h *h1) upgrading() bool { return h.upgradeKind() == upgradeWebSocket }

// writeRequest writes the request head and body to u.
func (h *h1) writeRequest(u *upConn, method string, fwd []byte, over string, upgrade bool) error {
	rq, w, buf := &h.rq, u.w, h.head
	w.WriteString(method)
	w.WriteByte(' ')
	if fwd != nil {
		w.Write(fwd)
	} else {
		w.Write(rq.target.of(buf))
	}
	w.WriteString(" HTTP/1.1\r\n")
	if over != "" || rq.hosts == 0 {
		// Absolute-form: its authority is the Host; HTTP/1.0 without Host
		// gets an empty one.
		w.WriteString("Host: " + over + "\r\n")
	}
	plainUpgrade := !upgrade && !rq.upgrade.empty()
	for _, f := range rq.fields {
		name := f.name.of(buf)
		isHost := equalFold(name, "host")
		if hopByHop(name) || !isHost && listed(buf, rq.connTokens, name) || isHost && over != "" {
			continue
		}
		if policies.IsHTTPEnvoyDropped(name) {
			continue // as Envoy drops it (forwardsField)
		}
		if plainUpgrade && equalFold(name, "http2-settings") {
			continue
		}
		w.Write(name)
		w.WriteString(": ")
		w.Write(f.value.of(buf))
		w.WriteString("\r\n")
	}
	if upgrade {
		w.WriteString("Connection: Upgrade\r\nUpgrade: ")
		w.Write(rq.upgrade.of(buf))
		w.WriteString("\r\n")
	}
	switch {
	case rq.chunked:
		w.WriteString("Transfer-Encoding: chunked\r\n")
	case rq.contentLength >= 0:
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), rq.contentLength, 10))
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
	if rq.hasBody() {
		if rq.expect100 {
			// The policy accepted the request; the proxy answers the
			// client's Expect itself, so the upstream is not asked again.
			h.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			if err := h.bw.Flush(); err != nil {
				return readErr{err: err, fromClient: true}
			}
		}
		bufp := copyBufs.Get().(*[32 << 10]byte)
		var err error
		if rq.chunked {
			var line []byte
			err = copyChunked(w, h.br, bufp[:], &line, true, false)
		} else {
			err = copyN(w, h.br, rq.contentLength, bufp[:])
		}
		copyBufs.Put(bufp)
		if err != nil {
			var re readErr
			if errors.As(err, &re) {
				re.fromClient = true
				return re
			}
			return fmt.Errorf("writing request upstream: %w", err)
		}
	}
	// A bodiless request's answer cannot begin before the request is
	// written whole: the write waits for it (rawIO.writeAwait), saving
	// the read that would find nothing. (A server may answer a request
	// with a body early, before the body is sent.)
	r, awaits := u.rw.(*rawIO)
	if awaits && !rq.hasBody() {
		r.awaitAnswer = true
	}
	err := w.Flush()
	if awaits {
		r.awaitAnswer = false
	}
	if err != nil {
		return fmt.Errorf("writing request upstream: %w", err)
	}
	return nil
}

// readResponseHead reads the next final response head (interim 1xx other
// than 101 are dropped) into u.head and u.resp.
func (u *upConn) readResponseHead() error {
	for {
		if err := u.readOneHead(); err != nil {
			return err
		}
		if s := u.resp.status; s >= 200 || s == http.StatusSwitchingProtocols {
			return nil
		}
	}
}

func (u *upConn) readOneHead() error {
	u.shrink()
	u.head = u.head[:0]
	rs := &u.resp
	*rs = response{fields: rs.fields[:0], connTokens: rs.connTokens[:0], contentLength: -1}
	var line span
	var err error
	u.head, line, err = readLine(u.r, u.head, maxResponseHead)
	if err != nil {
		if err == errHeadTooLarge {
			err = errBadResponse
		}
		return readErr{err: fmt.Errorf("reading upstream response: %w", err)}
	}
	b := line.of(u.head)
	// HTTP/1.x SP 3DIGIT [SP reason]
	if len(b) < 12 || string(b[:7]) != "HTTP/1." || b[7] < '0' || b[7] > '9' || b[8] != ' ' ||
		len(b) > 12 && b[12] != ' ' {
		return readErr{err: fmt.Errorf("%w: status line %q", errBadResponse, b[:min(len(b), 40)])}
	}
	rs.minor = int(b[7] - '0')
	for _, c := range b[9:12] {
		if c < '0' || c > '9' {
			return readErr{err: fmt.Errorf("%w: status line %q", errBadResponse, b[:min(len(b), 40)])}
		}
		rs.status = rs.status*10 + int(c-'0')
	}
	if rs.status < 100 || !validValue(b) {
		return readErr{err: fmt.Errorf("%w: status line %q", errBadResponse, b[:min(len(b), 40)])}
	}
	rs.statusRest = span{line.s + 9, line.e}
	for {
		// Each field counts fieldOverhead bytes too, as in a request head.
		u.head, line, err = readLine(u.r, u.head, maxResponseHead-fieldOverhead*len(rs.fields))
		if err != nil {
			if err == errHeadTooLarge {
				err = errBadResponse
			}
			return readErr{err: fmt.Errorf("reading upstream response: %w", err)}
		}
		if line.empty() {
			return nil
		}
		f, ok := parseField(u.head, line)
		if !ok {
			return readErr{err: fmt.Errorf("%w: header field %q", errBadResponse, line.of(u.head)[:min(line.e-line.s, 40)])}
		}
		name, val := f.name.of(u.head), f.value.of(u.head)
		switch {
		case equalFold(name, "content-length"):
			n, ok := parseContentLength(val)
			if !ok || rs.contentLength >= 0 && rs.contentLength != n {
				return readErr{err: fmt.Errorf("%w: Content-Length %q", errBadResponse, val)}
			}
			rs.contentLength = n
		case equalFold(name, "transfer-encoding"):
			// The codings are those of every field, in order.
			rs.te = true
			last := []byte(nil)
			tokens(val, func(t []byte) { last = t })
			if last != nil {
				rs.chunked = equalFold(last, "chunked")
			}
		case equalFold(name, "connection"):
			tokens(val, func(t []byte) {
				switch {
				case equalFold(t, "close"):
					rs.closeConn = true
				case equalFold(t, "keep-alive"):
					rs.keepAlive = true
				}
				off := f.value.s + (cap(val) - cap(t))
				rs.connTokens = append(rs.connTokens, span{off, off + len(t)})
			})
		}
		rs.fields = append(rs.fields, f)
	}
}

// Response body framings.
const (
	bodyNone = iota
	bodyLength
	bodyChunked
	bodyUntilClose
	bodyTunnel
)

// relay writes the response in u.resp and its body to the client.
func (h *h1) relay(ev *proxy.Event, u *upConn, method string, upgrade bool) bool {
	rs, rq, w, buf := &u.resp, &h.rq, h.bw, u.head
	ev.Status = rs.status
	mode := bodyUntilClose
	switch {
	case rs.status == http.StatusSwitchingProtocols:
		if !upgrade {
			h.dropUp(u)
			return h.upstreamFailed(ev, method, fmt.Errorf("%w: 101 to a request that asked no upgrade", errBadResponse), true)
		}
		if !switchedToWebSocket(u) {
			// A 101 without them switched nothing (a server that answers
			// the status a request names): it reads on as HTTP, and a
			// tunnel would carry the client's next requests past the
			// rules. The client's bytes after its request may be frames:
			// its connection closes.
			h.dropUp(u)
			return h.upstreamFailed(ev, method, fmt.Errorf("%w: 101 without Upgrade: websocket and Connection: upgrade", errBadResponse), false)
		}
		mode = bodyTunnel
	case method == http.MethodHead || rs.status < 200 || rs.status == 204 || rs.status == 304:
		mode = bodyNone
	case rs.chunked:
		mode = bodyChunked
	case rs.te:
		mode = bodyUntilClose // a coding other than chunked last: until close
	case rs.contentLength >= 0:
		mode = bodyLength
	}
	keepClient := h.clientKeepsAlive() && mode != bodyTunnel
	// What the client is sent: chunked when the length is unknown and the
	// client speaks 1.1, else until close.
	chunkOut := rq.minor >= 1 && (mode == bodyChunked || mode == bodyUntilClose)
	if (mode == bodyChunked || mode == bodyUntilClose) && !chunkOut {
		keepClient = false
	}
	keepUp := !rs.closeConn && (rs.minor >= 1 || rs.keepAlive) && mode != bodyUntilClose && mode != bodyTunnel &&
		!(rq.hasBody() && bodyIgnored(method))

	if rq.minor == 0 {
		w.WriteString("HTTP/1.0 ")
	} else {
		w.WriteString("HTTP/1.1 ")
	}
	w.Write(rs.statusRest.of(buf))
	w.WriteString("\r\n")
	for _, f := range rs.fields {
		name := f.name.of(buf)
		if hopByHop(name) || listed(buf, rs.connTokens, name) {
			// A body-less response's Content-Length describes what a GET
			// would get (HEAD, 304): it stays.
			if !(mode == bodyNone && equalFold(name, "content-length")) {
				continue
			}
		}
		w.Write(name)
		w.WriteString(": ")
		w.Write(f.value.of(buf))
		w.WriteString("\r\n")
	}
	switch {
	case mode == bodyTunnel && rs.status == http.StatusSwitchingProtocols:
		w.WriteString("Connection: Upgrade\r\nUpgrade: ")
		w.Write(upgradeOf(u))
		w.WriteString("\r\n")
	case mode == bodyLength:
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), rs.contentLength, 10))
		w.WriteString("\r\n")
	case chunkOut:
		w.WriteString("Transfer-Encoding: ")
		writeCodings(w, rs, buf)
		w.WriteString("chunked\r\n")
	}
	if mode != bodyTunnel {
		if !keepClient {
			w.WriteString("Connection: close\r\n")
		} else if rq.minor == 0 {
			w.WriteString("Connection: keep-alive\r\n")
		}
	}
	w.WriteString("\r\n")

	var err error
	switch mode {
	case bodyTunnel:
		h.tunnel(u)
		return false
	case bodyLength, bodyChunked, bodyUntilClose:
		bufp := copyBufs.Get().(*[32 << 10]byte)
		switch mode {
		case bodyLength:
			err = copyN(w, u.r, rs.contentLength, bufp[:])
		case bodyChunked:
			err = copyChunked(w, u.r, bufp[:], &u.head, chunkOut, true)
			u.head = u.head[:0]
		default:
			err = copyUntilEOF(w, u.r, bufp[:], chunkOut)
		}
		copyBufs.Put(bufp)
	}
	if err != nil {
		// The client or the upstream went away mid-body: neither
		// connection is in a known state.
		h.dropUp(u)
		ev.Verdict, ev.Error = proxy.VerdictError, fmt.Errorf("%w: %w", errAborted, err).Error()
		h.bw.Flush()
		return false
	}
	if !keepUp {
		h.dropUp(u)
	}
	if !keepClient {
		h.bw.Flush()
		return false
	}
	return true
}

// writeCodings writes the transfer codings of rs that come before a final
// chunked, each followed by ", ": those of every Transfer-Encoding field
// in order, less the last when it is chunked.
func writeCodings(w *bufio.Writer, rs *response, buf []byte) {
	if !rs.te {
		return
	}
	n := 0
	for _, f := range rs.fields {
		if equalFold(f.name.of(buf), "transfer-encoding") {
			tokens(f.value.of(buf), func([]byte) { n++ })
		}
	}
	if rs.chunked {
		n--
	}
	for _, f := range rs.fields {
		if equalFold(f.name.of(buf), "transfer-encoding") {
			tokens(f.value.of(buf), func(t []byte) {
				if n > 0 {
					w.Write(t)
					w.WriteString(", ")
					n--
				}
			})
		}
	}
}

// bodyIgnored: methods whose request body many servers do not read (no
// semantics are defined for it). Such a server takes the body for the
// next request, one the rules never judged, and answers it: the upstream
// connection is not reused after a request of these with a body, so that
// its answer is never read, whenever it comes. (The hidden request still
// reaches that server; no proxy can stop a server from misreading bytes.)
func bodyIgnored(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodDelete, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// upgradeOf is the protocol the upstream switched to (its Upgrade field).
func upgradeOf(u *upConn) []byte {
	for _, f := range u.resp.fields {
		if equalFold(f.name.of(u.head), "upgrade") {
			return f.value.of(u.head)
		}
	}
	return nil
}

// switchedToWebSocket reports whether u's 101 says what RFC 6455 (section
// 4.1) has a client check before it takes the connection for WebSocket:
// Upgrade: websocket and Connection: upgrade. (Envoy's codec switches to
// a tunnel only on a response with Connection: upgrade and an Upgrade.)
func switchedToWebSocket(u *upConn) bool {
	n, ws := 0, false
	tokens(upgradeOf(u), func(t []byte) {
		n++
		ws = equalFold(t, "websocket")
	})
	if n != 1 || !ws {
		return false
	}
	for _, t := range u.resp.connTokens {
		if equalFold(t.of(u.head), "upgrade") {
			return true
		}
	}
	return false
}

// tunnel relays bytes both ways after a 101, until either side ends or no
// byte moved either way for the stream idle timeout (as Envoy's covers an
// upgraded stream); then both connections close.
func (h *h1) tunnel(u *upConn) {
	if h.bw.Flush() != nil {
		return
	}
	h.noDeadlines(u)
	mv := moved{since: time.Now()}
	done := make(chan struct{}, 2)
	go func() {
		// What the client sent after the request, then the stream.
		io.Copy(u.c, movedReader{h.br, &mv})
		done <- struct{}{}
	}()
	go func() {
		io.Copy(h.c, movedReader{u.r, &mv})
		done <- struct{}{}
	}()
	// Checked every eighth of the timeout: closed after between one and
	// one and an eighth timeouts without a byte (later if the checks run
	// late, never sooner).
	t := h.e.cfg.StreamIdleTimeout
	var tick <-chan time.Time
	if t > 0 {
		tk := time.NewTicker(max(t/8, time.Millisecond))
		defer tk.Stop()
		tick = tk.C
	}
	ended := 0
	for idle := false; ended == 0 && !idle; {
		select {
		case <-done:
			ended++
		case <-tick:
			idle = mv.idleFor() >= t
		}
	}
	h.c.Close()
	u.c.Close()
	for ; ended < 2; ended++ {
		<-done
	}
}

// moved is when bytes last moved through a tunnel, either way.
type moved struct {
	since time.Time    // the tunnel's start, for monotonic offsets
	last  atomic.Int64 // the last move, as an offset from since
}

func (m *moved) note()                  { m.last.Store(int64(time.Since(m.since))) }
func (m *moved) idleFor() time.Duration { return time.Since(m.since) - time.Duration(m.last.Load()) }

// movedReader notes on m the reads that moved bytes through a tunnel.
type movedReader struct {
	r io.Reader
	m *moved
}

func (m movedReader) Read(b []byte) (int, error) {
	n, err := m.r.Read(b)
	if n > 0 {
		m.m.note()
	}
	return n, err
}

// handoff gives a connection that opened with the HTTP/2 preface to the
// HTTP/2 server, replaying the line already read.
func (h *h1) handoff() {
	// The HTTP/2 server keeps its own timeouts (it resets the deadline
	// itself today); the deadlines of this loop must not outlive it.
	h.noDeadlines(nil)
	pre := append([]byte(nil), h.head...)
	hc := &handoffConn{Conn: h.c, r: io.MultiReader(bytes.NewReader(pre), h.br), cs: h.cs}
	if h.e.h2l.push(hc) {
		h.handedOff = true
	}
}

// handoffConn is a client connection handed to net/http: reads start with
// what the HTTP/1 loop had read, and it carries the connection's state.
type handoffConn struct {
	net.Conn
	r  io.Reader
	cs *conn
}

func (c *handoffConn) Read(b []byte) (int, error) { return c.r.Read(b) }
