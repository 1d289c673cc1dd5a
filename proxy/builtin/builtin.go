package builtin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures an Engine.
type Config struct {
	// Listeners to serve, normally from proxy.ListenTransparent. The first
	// one's port is Engine.Port. The engine owns them and closes them.
	Listeners []net.Listener
	// Resolver is the initial policy; nil denies every request until Update.
	Resolver proxy.Resolver
	Logger   *slog.Logger
	// Events receives every request's verdict (optional).
	Events proxy.EventSink
	// OriginalDst finds a connection's original destination; default
	// proxy.OriginalDst (the local address of a transparent socket). Tests in
	// non-transparent mode return a fixed upstream.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	// Dial opens upstream connections; default proxy.DialMarked.
	Dial proxy.Dialer
	// MaxHeaderBytes bounds a request's header block (431 beyond), each
	// field counting 32 bytes beside its own as in HTTP/2; default 64 KiB.
	MaxHeaderBytes int
	// IdleTimeout closes idle client connections; default 2 minutes.
	IdleTimeout time.Duration
	// StreamIdleTimeout ends a request (an HTTP/1 exchange, an HTTP/2
	// stream) in which no byte moved for that long: a request body that
	// stalls, an upstream that does not answer (504), a client that does
	// not read its response. Default 5 minutes, Envoy's stream idle
	// timeout as the Envoy engine sets it. A WebSocket tunnel ends after
	// it too, when neither side sent a byte.
	StreamIdleTimeout time.Duration
	// MaxConnections bounds the client connections held open at once, and
	// MaxConnectionsPerSource those from one source address; a connection
	// over either is reset when accepted. Defaults 16384 and 4096; negative:
	// no bound.
	MaxConnections          int
	MaxConnectionsPerSource int

	// headerTimeout bounds the arrival of an HTTP/1 request head from its
	// first byte, and of an HTTP/2 header block or other frame but DATA
	// (h2Conn); default readHeaderTimeout (tests shorten it).
	headerTimeout time.Duration
}

// The connection limits' defaults (see Config).
const (
	DefaultMaxConnections          = 16384
	DefaultMaxConnectionsPerSource = 4096
)

// Engine is the built-in engine; it implements proxy.Engine.
type Engine struct {
	cfg      Config
	log      *slog.Logger
	srv      *http.Server // HTTP/2 (prior knowledge) connections, handed over by the HTTP/1 loop
	h2l      *chanListener
	rp       *httputil.ReverseProxy
	metrics  *proxy.Metrics
	resolver atomic.Pointer[resolverBox]
	port     uint16
	windows  h2Windows // HTTP/2 flow-control windows, the package's at New
	// idleSlack is how far a client's idle deadline may lag before it is
	// moved.
	idleSlack time.Duration
	// streamSlack is how often, at most, an exchange's deadlines move
	// while its bytes flow.
	streamSlack time.Duration
	limit       *limiter
	// lastRefusalLog is when a refused connection was last logged
	// (UnixNano).
	lastRefusalLog atomic.Int64

	// closing is done when Close begins: it ends upstream dials, which do
	// not follow the client.
	closing     context.Context
	closeCancel context.CancelFunc

	mu        sync.Mutex
	h2ups     map[*h2Upstream]struct{} // HTTP/2 client connections' upstream sides
	closed    bool
	h1conns   map[*h1]struct{}
	serveDone sync.WaitGroup // accept loops and HTTP/1 connections
}

type resolverBox struct{ r proxy.Resolver }

var _ proxy.Engine = (*Engine)(nil)

// New starts serving cfg.Listeners.
func New(cfg Config) (*Engine, error) {
	if len(cfg.Listeners) == 0 {
		return nil, errors.New("builtin proxy: no listeners (open them with proxy.ListenTransparent)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.OriginalDst == nil {
		cfg.OriginalDst = proxy.OriginalDst
	}
	if cfg.Dial == nil {
		cfg.Dial = proxy.DialMarked
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = 64 << 10
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.StreamIdleTimeout == 0 {
		cfg.StreamIdleTimeout = 5 * time.Minute
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.MaxConnectionsPerSource == 0 {
		cfg.MaxConnectionsPerSource = DefaultMaxConnectionsPerSource
	}
	if cfg.headerTimeout == 0 {
		cfg.headerTimeout = readHeaderTimeout
	}
	e := &Engine{
		cfg:     cfg,
		log:     cfg.Logger.With("subsys", "proxy", "engine", "builtin"),
		metrics: proxy.NewMetrics("builtin"),
		windows: windows,
		h2ups:   map[*h2Upstream]struct{}{},
		h1conns: map[*h1]struct{}{},
		h2l:     newChanListener(cfg.Listeners[0].Addr(), cfg.headerTimeout),
		limit:   newLimiter(cfg.MaxConnections, cfg.MaxConnectionsPerSource),
	}
	e.idleSlack = min(cfg.IdleTimeout/8, time.Second)
	e.streamSlack = min(cfg.StreamIdleTimeout/8, time.Second)
	e.closing, e.closeCancel = context.WithCancel(context.Background())
	if a, ok := cfg.Listeners[0].Addr().(*net.TCPAddr); ok {
		e.port = uint16(a.Port)
	}
	e.resolver.Store(&resolverBox{cfg.Resolver})
	e.rp = &httputil.ReverseProxy{
		Rewrite:      e.rewrite,
		Transport:    roundTripper{e},
		ErrorHandler: e.upstreamError,
		// A response is copied a frame at a time: what a stream whose
		// client does not read holds beside its window (httputil's
		// default is a new 32 KiB buffer a response).
		BufferPool: copyBuffers{},
		ErrorLog:   slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	e.srv = &http.Server{
		Handler:        e,
		Protocols:      &protos,
		ConnContext:    e.connContext,
		ConnState:      e.connState,
		MaxHeaderBytes: cfg.MaxHeaderBytes,
		// What is left of the preface after the HTTP/1 loop read its
		// first line; header blocks are h2Conn's.
		ReadHeaderTimeout: cfg.headerTimeout,
		// OPTIONS * is judged like any request, not answered by net/http.
		DisableGeneralOptionsHandler: true,
		IdleTimeout:                  cfg.IdleTimeout,
		// A client that takes none of what is written to it is closed
		// (stream idle timeouts end the streams waiting on it too).
		// Frames of 16 KiB at most (h2MaxFrame). What a client sends of
		// request bodies that their upstreams do not take yet waits here
		// up to a stream's window and the connection's, its streams
		// together (h2Windows).
		HTTP2: &http.HTTP2Config{
			WriteByteTimeout:              cfg.StreamIdleTimeout,
			MaxReadFrameSize:              h2MaxFrame,
			MaxReceiveBufferPerStream:     int(e.windows.clientStream),
			MaxReceiveBufferPerConnection: int(e.windows.clientConn),
		},
		ErrorLog: slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
	}
	e.serveDone.Add(1)
	go func() {
		defer e.serveDone.Done()
		e.srv.Serve(e.h2l)
	}()
	for _, l := range cfg.Listeners {
		e.serveDone.Add(1)
		go func() {
			defer e.serveDone.Done()
			e.accept(l)
		}()
	}
	return e, nil
}

// accept serves l until it is closed.
func (e *Engine) accept(l net.Listener) {
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if e.closing.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait, as net/http does.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			e.log.Error("proxy accept failed", "addr", l.Addr().String(), "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
				continue
			case <-e.closing.Done():
				return
			}
		}
		backoff = 0
		cs := &conn{src: proxy.RemoteAddrPort(c)}
		cs.dst, cs.dstErr = e.cfg.OriginalDst(c)
		if cs.dstErr == nil && e.direct(cs.dst) {
			e.refuse(c, cs.src, refusedDirect)
			continue
		}
		if reason := e.limit.admit(cs.src.Addr()); reason != "" {
			e.refuse(c, cs.src, reason)
			continue
		}
		e.metrics.Connections.Inc()
		e.metrics.ConnectionsActive.Inc()
		e.serveDone.Add(1)
		go func() {
			defer e.serveDone.Done()
			e.serveH1(c, cs)
		}()
	}
}

// track registers a client connection for Close; false when closing.
func (e *Engine) track(h *h1) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.h1conns[h] = struct{}{}
	return true
}

func (e *Engine) untrack(h *h1) {
	e.mu.Lock()
	delete(e.h1conns, h)
	e.mu.Unlock()
}

// Name implements proxy.Engine.
func (e *Engine) Name() string { return "builtin" }

// Port implements proxy.Engine.
func (e *Engine) Port() uint16 { return e.port }

// Update implements proxy.Engine.
func (e *Engine) Update(r proxy.Resolver) error {
	e.resolver.Store(&resolverBox{r})
	return nil
}

// Collectors implements proxy.Engine.
func (e *Engine) Collectors() []prometheus.Collector { return e.metrics.Collectors() }

// Close implements proxy.Engine: it closes the listeners, every client
// connection (upgraded ones too) and the upstream connections, and waits
// for the connections' goroutines.
func (e *Engine) Close() error {
	e.closeCancel()
	var err error
	for _, l := range e.cfg.Listeners {
		if cerr := l.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) && err == nil {
			err = cerr
		}
	}
	e.mu.Lock()
	e.closed = true
	for h := range e.h1conns {
		h.abort()
	}
	ups := make([]*h2Upstream, 0, len(e.h2ups))
	for u := range e.h2ups {
		ups = append(ups, u)
	}
	e.mu.Unlock()
	e.srv.Close()
	for _, u := range ups {
		u.close()
	}
	e.serveDone.Wait()
	return err
}

// conn is what the engine knows about one client connection.
type conn struct {
	src, dst netip.AddrPort
	dstErr   error

	mu       sync.Mutex
	resolved *resolverBox
	decision proxy.Decision
	err      error
}

// connContext gives HTTP/2 requests their connection's state and
// upstream side.
func (e *Engine) connContext(ctx context.Context, c net.Conn) context.Context {
	hc, ok := c.(*h2Conn)
	if !ok {
		// Only the HTTP/1 loop hands connections over; just in case
		// (Close still closes its upstream connections).
		cs := &conn{src: proxy.RemoteAddrPort(c)}
		cs.dst, cs.dstErr = e.cfg.OriginalDst(c)
		ctx = context.WithValue(ctx, upstreamKey{}, &h2Upstream{e: e})
		return context.WithValue(ctx, connKey{}, cs)
	}
	hc.up = &h2Upstream{e: e}
	ctx = context.WithValue(ctx, upstreamKey{}, hc.up)
	return context.WithValue(ctx, connKey{}, hc.cs)
}

type connKey struct{}

type upstreamKey struct{}

// connState counts the end of a handed-over connection (its start was
// counted when accepted), and closes its upstream connections.
func (e *Engine) connState(c net.Conn, s http.ConnState) {
	switch s {
	case http.StateClosed, http.StateHijacked:
		if hc, ok := c.(*h2Conn); ok {
			e.connEnded(hc.cs)
			if hc.up != nil {
				hc.up.close()
			}
		}
	}
}

// connEnded counts the end of a client connection the accept loop admitted.
func (e *Engine) connEnded(cs *conn) {
	e.metrics.ConnectionsActive.Dec()
	e.limit.release(cs.src.Addr())
}

// decide returns the connection's decision under the current resolver,
// resolving again when the resolver changed since the last request.
func (cs *conn) decide(box *resolverBox) (proxy.Decision, error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.resolved == box {
		return cs.decision, cs.err
	}
	cs.resolved = box
	switch {
	case cs.dstErr != nil:
		cs.decision, cs.err = proxy.Decision{}, fmt.Errorf("original destination: %w", cs.dstErr)
	case box.r == nil:
		cs.decision, cs.err = proxy.Decision{}, errors.New("no L7 policy loaded yet")
	default:
		cs.decision, cs.err = box.r.Resolve(cs.src, cs.dst)
	}
	return cs.decision, cs.err
}

type targetKey struct{}

// target is one allowed request's upstream.
type target struct {
	dst  netip.AddrPort
	mark uint32
	up   *h2Upstream // the client connection's upstream side
	path string      // normalized path to forward, "" to keep the original
	// rawPath is the original path's encoding to forward, "" to keep it.
	rawPath string
	err     error // upstream failure, set by upstreamError
}

// ServeHTTP judges one HTTP/2 stream (HTTP/1.x requests never get here:
// the HTTP/1 loop serves them).
//
// The stream idle timeout runs from the start: the stream ends when none
// of its bytes moved for that long (errStreamIdle; 504 before a
// response). A response write that waits for the client's flow-control
// window does not end with the context, and a client that never opens
// its window while it reads the connection (so that no connection write
// stalls, and WriteByteTimeout never fires) would hold the stream, its
// goroutine and buffers for ever: once the response began, the timeout
// resets the stream (a 504 written after it gets another timeout to
// leave). What a handler leaves buffered is written after it
// returns, where nothing can reset the stream (a 403 whole, the tail of a
// body), so the response is flushed before, the timeout still running.
func (e *Engine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: w}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	idle := newStreamIdle(e.cfg.StreamIdleTimeout, func() (again bool) {
		cancel(errStreamIdle)
		if !sw.started.Load() {
			// The 504 that follows gets a timeout of its own.
			return true
		}
		// No 504 can follow a response that began.
		http.NewResponseController(w).SetWriteDeadline(time.Unix(1, 0))
		return false
	})
	defer idle.close()
	sw.idle = idle
	var slot streamSlot
	defer slot.release(e)
	e.serveStream(sw, r, ctx, &slot)
	sw.Flush()
}

// streamSlot is the slot of the connection limits a stream took, held
// until its response has left (ServeHTTP's flush).
type streamSlot struct {
	src  netip.Addr
	held bool
}

func (s *streamSlot) release(e *Engine) {
	if s.held {
		e.limit.release(s.src)
	}
}

// serveStream judges and serves one HTTP/2 stream; ctx ends with the
// stream idle timeout.
func (e *Engine) serveStream(w *statusWriter, r *http.Request, ctx context.Context, slot *streamSlot) {
	start := time.Now()
	cs, _ := r.Context().Value(connKey{}).(*conn)
	if cs == nil {
		http.Error(w, "membrane: internal error: connection state missing", http.StatusInternalServerError)
		return
	}
	box := e.resolver.Load()
	req := proxy.RequestOf(r)
	req.Headers = forwardedHeader(r.Header)
	ev := proxy.Event{
		Time: start, Engine: "builtin", Src: cs.src, Dst: cs.dst,
		Proto: r.Proto, Method: r.Method, Path: req.Path, Host: req.Host,
	}
	// A stream holds what an HTTP/1 connection holds (goroutines, an
	// upstream stream, buffers), so streams take slots of the connection
	// limits too, until their response left: one client cannot open 250
	// streams on each of its connections.
	if reason := e.limit.admit(cs.src.Addr()); reason != "" {
		e.metrics.ConnectionsRefused.WithLabelValues(reason).Inc()
		ev.Verdict, ev.Status, ev.Error = proxy.VerdictError, http.StatusServiceUnavailable, "refused: "+reason
		w.Header().Set("Retry-After", "1")
		http.Error(w, "membrane: too many connections and requests in flight ("+reason+")", http.StatusServiceUnavailable)
		e.finish(&ev, start)
		return
	}
	slot.src, slot.held = cs.src.Addr(), true
	dec, err := cs.decide(box)
	ev.SrcIdentity, ev.DstIdentity = dec.SrcIdentity, dec.DstIdentity
	if err == nil && r.Method == http.MethodConnect {
		err = errConnect
	}
	why := policies.HTTPAmbiguousTarget(r.RequestURI, r.URL.Path)
	for i := 0; why == "" && i < len(r.RequestURI); i++ {
		// HTTP/1.1 refuses these in its parser; net/http's HTTP/2 server
		// takes a space or a byte above 0x7E in :path.
		if !policies.HTTPTargetByte(r.RequestURI[i]) {
			why = "a byte that is not visible ASCII in the request target"
		}
	}
	if why == "" {
		why = policies.HTTPAsteriskTarget(r.Method, r.RequestURI)
	}
	if why != "" {
		why = "invalid request target: " + why
	} else if why = policies.HTTPAmbiguousHost(r.Host); why != "" {
		why = "invalid host: " + why
	} else if r.Host == "" {
		// The transport would send the destination's address as the
		// authority, which no rule judged; HTTP/1.1 requires a Host too.
		why = "invalid host: no :authority or Host"
	} else if why = blankAroundValue(r.Header); why != "" {
		why = "invalid header: " + why
	} else if why = dec.FieldAlias(req.Headers); why != "" {
		why = "invalid header: " + why
	} else if why = dec.MethodOverride(req.Headers); why != "" {
		why = "invalid header: " + why
	} else if why = dec.PathOverride(req.Headers); why != "" {
		why = "invalid header: " + why
	} else if dec.JudgesHost() {
		if why = policies.HTTPHostCase(r.Host); why != "" {
			why = "invalid host: " + why
		}
		// The least refused name in byte order, as proxy.Decision's
		// checks pick one: the same request gets the same 400 every
		// time, whatever order the map is walked in.
		alias := ""
		for name := range req.Headers {
			if why == "" && (alias == "" || name < alias) && policies.HTTPForwardedHostAlias(name) != "" {
				alias = name
			}
		}
		if alias != "" {
			why = "invalid header: " + policies.HTTPForwardedHostAlias(alias)
		}
		for name, vals := range req.Headers {
			if why != "" {
				break
			}
			for _, v := range vals {
				req.AddForwardedHost(name, v)
			}
		}
	}
	if err == nil && why != "" {
		ev.Path = r.RequestURI
		if policies.HTTPAmbiguousHost(r.Host) != "" || dec.JudgesHost() && policies.HTTPHostCase(r.Host) != "" {
			ev.Host = r.Host // as sent, to show what was refused
		}
		ev.Verdict, ev.Status, ev.Error = proxy.VerdictError, http.StatusBadRequest, why
		http.Error(w, "400 Bad Request: "+why, http.StatusBadRequest)
		e.finish(&ev, start)
		return
	}
	if err != nil {
		ev.Verdict, ev.Status, ev.Error = proxy.VerdictDenied, http.StatusForbidden, err.Error()
		refused(&ev, err)
		deny(w, "Access denied by Membrane: "+err.Error())
		e.finish(&ev, start)
		return
	}
	ruleID, by, allowed := dec.Verdict(&req)
	if by != nil {
		ev.Direction = by.Direction.String()
	}
	if !allowed {
		names := proxy.PolicyNames(box.r, by)
		ev.Verdict, ev.Status, ev.Policy = proxy.VerdictDenied, http.StatusForbidden, strings.Join(names, ",")
		deny(w, proxy.DenyText(names, by))
		e.finish(&ev, start)
		return
	}
	ev.RuleID = ruleID
	if ruleID != 0 {
		ev.Policy = box.r.PolicyName(ruleID)
	}
	up, _ := r.Context().Value(upstreamKey{}).(*h2Upstream)
	t := &target{dst: cs.dst, mark: proxy.FromProxyMark(dec.SrcIdentity), up: up}
	// Forwarded as judged: normalized, or with the escapes the rules read
	// as letters or '/' decoded (decodeRouting).
	if req.Path != r.URL.Path && r.URL.Path != "*" { // "*" is judged as "/*", sent as it is
		t.path = req.Path
	} else if routingEscapes(r.URL.RawPath) {
		t.rawPath = string(decodeRouting([]byte(r.URL.RawPath)))
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = idleBody{r.Body, w.idle}
	}
	defer func() {
		// httputil.ReverseProxy aborts a response that broke off mid-body
		// with this panic (net/http resets the stream): it is recorded as
		// the HTTP/1 loop records it.
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				ev.Status, ev.Verdict, ev.Error = w.status, proxy.VerdictError, errAborted.Error()
				if context.Cause(ctx) == errStreamIdle {
					ev.Error += ": " + errStreamIdle.Error()
				}
				e.finish(&ev, start)
			}
			panic(p)
		}
	}()
	e.rp.ServeHTTP(w, r.WithContext(context.WithValue(ctx, targetKey{}, t)))
	ev.Status = w.status
	ev.Verdict = proxy.VerdictForwarded
	if t.err != nil {
		ev.Verdict, ev.Error = proxy.VerdictError, t.err.Error()
	}
	e.finish(&ev, start)
}

// refused marks ev as a connection the resolver refused before any rule
// (proxy.RefusalReason): Docker keeps its ends apart, which is the
// client's concern, so its egress is named as the deciding side.
func refused(ev *proxy.Event, err error) {
	if ev.Reason = proxy.RefusalReason(err); ev.Reason != "" {
		ev.Direction = policies.Egress.String()
	}
}

func (e *Engine) finish(ev *proxy.Event, start time.Time) {
	ev.Duration = time.Since(start)
	e.metrics.Observe(ev)
	if e.cfg.Events != nil {
		e.cfg.Events(*ev)
	}
}

// hopHeaders are the fields the reverse proxy removes from a request
// before it goes upstream (net/http/httputil); TE survives as "trailers"
// when it says so.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// forwardedHeader is h as the upstream gets it through the reverse proxy:
// without the hop-by-hop fields, so a rule cannot pass on a field the
// server will not get. h itself when it has none of them.
func forwardedHeader(h http.Header) http.Header {
	has := false
	for _, k := range hopHeaders {
		if _, ok := h[k]; ok {
			has = true
			break
		}
	}
	for k := range h {
		if has {
			break
		}
		has = policies.IsHTTPEnvoyDropped(k)
	}
	if !has {
		return h
	}
	out := h.Clone()
	for _, k := range hopHeaders {
		delete(out, k)
	}
	dropEnvoyFields(out)
	for _, v := range h["Te"] {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "trailers") {
				out["Te"] = []string{"trailers"}
			}
		}
	}
	return out
}

// dropEnvoyFields deletes from h the x-envoy- fields Envoy takes out of
// client requests (policies.HTTPEnvoyDropped): the built-in engine
// neither judges nor forwards them either.
func dropEnvoyFields(h http.Header) {
	for k := range h {
		if policies.IsHTTPEnvoyDropped(k) {
			delete(h, k)
		}
	}
}

func deny(w http.ResponseWriter, body string) {
	if !strings.HasSuffix(body, "\n") {
		body += "\n"
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusForbidden)
	io.WriteString(w, body)
}

func (e *Engine) rewrite(pr *httputil.ProxyRequest) {
	t := pr.In.Context().Value(targetKey{}).(*target)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = t.dst.String()
	if t.path != "" {
		pr.Out.URL.Path, pr.Out.URL.RawPath = t.path, ""
	} else if t.rawPath != "" {
		pr.Out.URL.RawPath = t.rawPath
	}
	pr.Out.Host = pr.In.Host
	// Rewrite mode drops these; the rules judged them, and a transparent
	// proxy forwards them as the HTTP/1 loop does.
	for _, k := range forwardedFor {
		if v, ok := pr.In.Header[k]; ok {
			pr.Out.Header[k] = v
		}
	}
	dropEnvoyFields(pr.Out.Header)
}

// forwardedFor are the fields httputil.ReverseProxy removes in Rewrite mode.
var forwardedFor = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

func (e *Engine) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	t := r.Context().Value(targetKey{}).(*target)
	t.err = err
	if errors.Is(context.Cause(r.Context()), errStreamIdle) {
		t.err = errStreamIdle
		http.Error(w, "membrane: upstream did not answer in time", http.StatusGatewayTimeout)
		return
	}
	if errors.Is(err, context.Canceled) {
		// The client went away; nobody reads the answer.
		w.WriteHeader(499)
		return
	}
	e.log.Debug("upstream failed", "dst", t.dst.String(), "err", err)
	http.Error(w, "membrane: upstream unavailable", http.StatusBadGateway)
}

// roundTripper sends a request over its client connection's upstream
// transport of its mark.
type roundTripper struct{ e *Engine }

func (rt roundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	t := r.Context().Value(targetKey{}).(*target)
	u, err := t.up.transport(t.mark)
	if err != nil {
		return nil, err
	}
	return u.RoundTrip(r)
}

// h2MaxFrame is the largest HTTP/2 frame the engine reads, from a client
// or an upstream: HTTP/2's initial SETTINGS_MAX_FRAME_SIZE, which most
// servers keep (net/http's transport, Kestrel). net/http's HTTP/2 reader keeps a buffer as large as the largest
// frame it read for the connection's life, so with its server's default
// of 1 MiB one frame (of an extension type, which it then ignores) made a
// client connection pin 1 MiB of membraned's memory.
const h2MaxFrame = 16 << 10

// copyBuffers are the reverse proxy's buffers for copying responses, of
// an HTTP/2 frame each (h2MaxFrame).
type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { return new([h2MaxFrame]byte) }}

func (copyBuffers) Get() []byte { return copyBufferPool.Get().(*[h2MaxFrame]byte)[:] }

func (copyBuffers) Put(b []byte) {
	if len(b) == h2MaxFrame {
		copyBufferPool.Put((*[h2MaxFrame]byte)(b))
	}
}

// h2Windows are the HTTP/2 flow-control windows the engine grants, which
// bound what membraned holds of bodies the other side does not take yet
// (decisions 86 and 87 in docs/policy.md). Every HTTP/2 stream takes a
// slot of the connection limits, and a client can spread its streams over
// connections, so a stream's windows are what a slot may hold: with
// net/http's 1 MiB, some 16 GiB at the default max_connections. 64 KiB,
// HTTP/2's own initial window, still moves a stream at GB/s over the
// local round trips of a host (tens of microseconds), and a slot then
// holds about 85 KiB of bodies each way at most, twice what an HTTP/1.1
// connection holds. A variable only so that BenchmarkH2Windows can
// measure others; New reads it.
type h2Windows struct {
	// upstreamStream is the window of an HTTP/2 stream to an upstream:
	// what membraned holds of a response its client does not read.
	upstreamStream int32
	// upstreamConn is the window of an HTTP/2 connection to an upstream,
	// which its streams share: what membraned holds of the responses its
	// client connection does not read, whatever the number of streams
	// (net/http's transport returns the window as a response is read,
	// that is, as it leaves for the client). Twice a stream's window
	// (net/http adds HTTP/2's initial 64 KiB), so that one or two
	// streams their client does not read leave its other streams on
	// the connection room to move; a third takes the rest, and they
	// wait until the unread streams are read or the stream idle timeout
	// resets them. Envoy's clusters get the same windows (proxy/envoy).
	upstreamConn int32
	// clientStream and clientConn are the windows of an HTTP/2 client
	// connection's streams and of the connection: what membraned holds
	// of the request bodies a client connection sends that their
	// upstreams do not take yet (net/http's server returns the window
	// as a body is read, that is, as it leaves for the upstream). A
	// stream's is not below HTTP/2's initial 65,535 bytes, which a
	// client may send before it has the engine's settings. The Envoy
	// engine sets its clients' windows the same (proxy/envoy).
	clientStream, clientConn int32
}

var windows = h2Windows{
	upstreamStream: 64 << 10,
	upstreamConn:   128 << 10,
	clientStream:   64 << 10,
	clientConn:     128 << 10,
}

// chanListener is the HTTP/2 server's listener: the connections the
// HTTP/1 loop hands over, held to the header timeout (h2Conn).
type chanListener struct {
	addr          net.Addr
	headerTimeout time.Duration
	ch            chan net.Conn
	once          sync.Once
	done          chan struct{}
}

func newChanListener(addr net.Addr, headerTimeout time.Duration) *chanListener {
	return &chanListener{addr: addr, headerTimeout: headerTimeout, ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c over; false (c not taken) once the listener is closed.
func (l *chanListener) push(hc *handoffConn) bool {
	c := newH2Conn(hc, l.headerTimeout)
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// statusWriter records the final status for the event. Unwrap lets
// http.ResponseController reach Flush and Hijack (WebSocket) underneath.
type statusWriter struct {
	http.ResponseWriter
	status int
	idle   *streamIdle // marked on every write (nil: none)
	// started: the response began (read by idle's expiry, on the timer's
	// goroutine).
	started atomic.Bool
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
		w.started.Store(true)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
		w.started.Store(true)
	}
	n, err := w.ResponseWriter.Write(b)
	if n > 0 && w.idle != nil {
		w.idle.mark()
	}
	return n, err
}

func (w *statusWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// blankAroundValue names a field whose value begins or ends with a blank,
// which makes an HTTP/2 request malformed (RFC 9113 8.2.1). HTTP/1.1's
// parser strips such blanks and the rules judge the value without them; an
// HTTP/2 server gets the value as sent, so it could read another value than
// the one judged.
func blankAroundValue(h http.Header) string {
	for name, vals := range h {
		for _, v := range vals {
			if strings.Trim(v, " \t") != v {
				return name + ": a value that begins or ends with a blank"
			}
		}
	}
	return ""
}
