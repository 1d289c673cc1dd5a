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
	// MaxHeaderBytes bounds a request's header block (431 beyond); default 64 KiB.
	MaxHeaderBytes int
	// IdleTimeout closes idle client connections; default 2 minutes.
	IdleTimeout time.Duration
}

// Engine is the built-in engine; it implements proxy.Engine.
type Engine struct {
	cfg      Config
	log      *slog.Logger
	srv      *http.Server
	rp       *httputil.ReverseProxy
	metrics  *proxy.Metrics
	resolver atomic.Pointer[resolverBox]
	port     uint16

	// closing is done when Close begins: it ends upstream dials that do
	// not follow the client's context (forward1).
	closing     context.Context
	closeCancel context.CancelFunc

	mu        sync.Mutex
	upstreams map[uint32]*upstream
	closed    bool
	hijacked  map[net.Conn]struct{}
	conns     sync.Map // net.Conn -> *conn, to close upstreams with their clients
	serveDone sync.WaitGroup
}

type resolverBox struct{ r proxy.Resolver }

type upstream struct{ h1, h2 *http.Transport }

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
	e := &Engine{
		cfg:       cfg,
		log:       cfg.Logger.With("subsys", "proxy", "engine", "builtin"),
		metrics:   proxy.NewMetrics("builtin"),
		upstreams: map[uint32]*upstream{},
		hijacked:  map[net.Conn]struct{}{},
	}
	e.closing, e.closeCancel = context.WithCancel(context.Background())
	if a, ok := cfg.Listeners[0].Addr().(*net.TCPAddr); ok {
		e.port = uint16(a.Port)
	}
	e.resolver.Store(&resolverBox{cfg.Resolver})
	e.rp = &httputil.ReverseProxy{
		Rewrite:      e.rewrite,
		Transport:    roundTripper{e},
		ErrorHandler: e.upstreamError,
		ErrorLog:     slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	e.srv = &http.Server{
		Handler:           e,
		Protocols:         &protos,
		ConnContext:       e.connContext,
		ConnState:         e.connState,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       cfg.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
	}
	for _, l := range cfg.Listeners {
		e.serveDone.Add(1)
		go func() {
			defer e.serveDone.Done()
			if err := e.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				e.log.Error("proxy listener stopped", "addr", l.Addr().String(), "err", err)
			}
		}()
	}
	return e, nil
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
// connection (upgraded ones too) and the idle upstream connections.
func (e *Engine) Close() error {
	e.closeCancel()
	e.mu.Lock()
	e.closed = true
	for c := range e.hijacked {
		c.Close()
	}
	ups := e.upstreams
	e.upstreams = map[uint32]*upstream{}
	e.mu.Unlock()
	err := e.srv.Close()
	e.conns.Range(func(k, v any) bool {
		v.(*conn).closeUpstream()
		e.conns.Delete(k)
		return true
	})
	for _, u := range ups {
		u.h1.CloseIdleConnections()
		u.h2.CloseIdleConnections()
	}
	e.serveDone.Wait()
	return err
}

type connKey struct{}

// conn is what the engine knows about one client connection.
type conn struct {
	c        net.Conn
	src, dst netip.AddrPort
	dstErr   error

	upMu sync.Mutex // serializes the fast path's use of up
	up   *upConn

	mu       sync.Mutex
	resolved *resolverBox
	decision proxy.Decision
	err      error
}

func (e *Engine) connContext(ctx context.Context, c net.Conn) context.Context {
	cs := &conn{c: c, src: proxy.RemoteAddrPort(c)}
	cs.dst, cs.dstErr = e.cfg.OriginalDst(c)
	e.conns.Store(c, cs)
	return context.WithValue(ctx, connKey{}, cs)
}

// closeUpstreamOf closes the upstream connection of client connection c.
func (e *Engine) closeUpstreamOf(c net.Conn) {
	if v, ok := e.conns.LoadAndDelete(c); ok {
		v.(*conn).closeUpstream()
	}
}

func (e *Engine) connState(c net.Conn, s http.ConnState) {
	switch s {
	case http.StateNew:
		e.metrics.Connections.Inc()
		e.metrics.ConnectionsActive.Inc()
	case http.StateClosed:
		e.metrics.ConnectionsActive.Dec()
		e.closeUpstreamOf(c)
	case http.StateHijacked:
		e.closeUpstreamOf(c)
		// Upgraded (WebSocket) connections: net/http forgets them, so Close
		// must find them here.
		e.mu.Lock()
		if e.closed {
			c.Close()
		} else {
			e.hijacked[c] = struct{}{}
		}
		e.mu.Unlock()
		e.metrics.ConnectionsActive.Dec()
	}
}

func (e *Engine) forgetHijacked(c net.Conn) {
	e.mu.Lock()
	delete(e.hijacked, c)
	e.mu.Unlock()
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
	h2   bool
	path string // normalized path to forward, "" to keep the original
	err  error  // upstream failure, set by upstreamError
}

// ServeHTTP judges one request (one HTTP/2 stream).
func (e *Engine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	cs, _ := r.Context().Value(connKey{}).(*conn)
	if cs == nil {
		http.Error(w, "membrane: internal error: connection state missing", http.StatusInternalServerError)
		return
	}
	box := e.resolver.Load()
	req := proxy.RequestOf(r)
	ev := proxy.Event{
		Time: start, Engine: "builtin", Src: cs.src, Dst: cs.dst,
		Proto: r.Proto, Method: r.Method, Path: req.Path, Host: req.Host,
	}
	dec, err := cs.decide(box)
	ev.SrcIdentity, ev.DstIdentity = dec.SrcIdentity, dec.DstIdentity
	if err != nil {
		ev.Verdict, ev.Status, ev.Error = proxy.VerdictDenied, http.StatusForbidden, err.Error()
		deny(w, "Access denied by Membrane: "+err.Error())
		e.finish(&ev, start)
		return
	}
	ruleID, denied := dec.Verdict(&req)
	if denied != nil {
		names := proxy.PolicyNames(box.r, denied)
		ev.Verdict, ev.Status, ev.Policy = proxy.VerdictDenied, http.StatusForbidden, strings.Join(names, ",")
		deny(w, denyText(names, denied))
		e.finish(&ev, start)
		return
	}
	ev.RuleID = ruleID
	if ruleID != 0 {
		ev.Policy = box.r.PolicyName(ruleID)
	}
	t := &target{dst: cs.dst, mark: proxy.FromProxyMark(dec.SrcIdentity), h2: r.ProtoMajor == 2}
	if req.Path != r.URL.Path {
		t.path = req.Path
	}
	if fastPath(r) {
		status, err := e.forward1(w, r, cs, t)
		if errors.Is(err, errAborted) {
			ev.Status, ev.Verdict, ev.Error = status, proxy.VerdictError, err.Error()
			e.finish(&ev, start)
			panic(http.ErrAbortHandler)
		}
		if err != nil {
			t.err = err
			status = http.StatusBadGateway
			if errors.Is(err, context.Canceled) {
				// Engine.Close: nobody is left to answer.
				status = 499
			} else {
				e.log.Debug("upstream failed", "dst", t.dst.String(), "err", err)
				http.Error(w, "membrane: upstream unavailable", http.StatusBadGateway)
			}
		}
		ev.Status, ev.Verdict = status, proxy.VerdictForwarded
		if t.err != nil {
			ev.Verdict, ev.Error = proxy.VerdictError, t.err.Error()
		}
		e.finish(&ev, start)
		return
	}
	sw := &statusWriter{ResponseWriter: w}
	e.rp.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), targetKey{}, t)))
	ev.Status = sw.status
	if sw.status == http.StatusSwitchingProtocols {
		// The upgraded connection ended with ServeHTTP.
		e.forgetHijacked(cs.c)
	}
	ev.Verdict = proxy.VerdictForwarded
	if t.err != nil {
		ev.Verdict, ev.Error = proxy.VerdictError, t.err.Error()
	}
	e.finish(&ev, start)
}

func (e *Engine) finish(ev *proxy.Event, start time.Time) {
	ev.Duration = time.Since(start)
	e.metrics.Observe(ev)
	if e.cfg.Events != nil {
		e.cfg.Events(*ev)
	}
}

func denyText(policies []string, c *proxy.Check) string {
	side := c.Direction.String()
	if len(policies) == 0 {
		return fmt.Sprintf("Access denied by Membrane: no %s http rule allows this request\n", side)
	}
	q := make([]string, len(policies))
	for i, p := range policies {
		q[i] = strconv.Quote(p)
	}
	return fmt.Sprintf("Access denied by Membrane policy %s: no %s http rule matches this request\n", strings.Join(q, ", "), side)
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
	}
	pr.Out.Host = pr.In.Host
}

func (e *Engine) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	t := r.Context().Value(targetKey{}).(*target)
	t.err = err
	if errors.Is(err, context.Canceled) {
		// The client went away; nobody reads the answer.
		w.WriteHeader(499)
		return
	}
	e.log.Debug("upstream failed", "dst", t.dst.String(), "err", err)
	http.Error(w, "membrane: upstream unavailable", http.StatusBadGateway)
}

// roundTripper sends a request over the transport of its mark and protocol.
type roundTripper struct{ e *Engine }

func (rt roundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	t := r.Context().Value(targetKey{}).(*target)
	u := rt.e.upstream(t.mark)
	if t.h2 {
		return u.h2.RoundTrip(r)
	}
	return u.h1.RoundTrip(r)
}

func (e *Engine) upstream(mark uint32) *upstream {
	e.mu.Lock()
	defer e.mu.Unlock()
	if u, ok := e.upstreams[mark]; ok {
		return u
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, fmt.Errorf("upstream address %q: %w", addr, err)
		}
		return e.cfg.Dial(ctx, ap, mark)
	}
	var p1, p2 http.Protocols
	p1.SetHTTP1(true)
	p2.SetUnencryptedHTTP2(true)
	u := &upstream{
		h1: &http.Transport{
			DialContext: dial, Protocols: &p1,
			MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second,
			ExpectContinueTimeout: time.Second, DisableCompression: true,
		},
		h2: &http.Transport{
			DialContext: dial, Protocols: &p2,
			IdleConnTimeout: 90 * time.Second, DisableCompression: true,
		},
	}
	e.upstreams[mark] = u
	return u
}

// statusWriter records the final status for the event. Unwrap lets
// http.ResponseController reach Flush and Hijack (WebSocket) underneath.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
