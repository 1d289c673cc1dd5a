package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Backend is what the daemon offers the API. Reads must be cheap and safe
// for concurrent use; writes are requests to the reconciler.
type Backend interface {
	Status() Status
	Endpoints() []Endpoint
	// Endpoint finds an endpoint by id, container name or container id.
	Endpoint(ref string) (Endpoint, bool)
	Identities() []Identity
	Policy() Policy
	Trace(ctx context.Context, req TraceRequest) (TraceResult, error)
	// Flows returns the kept backlog and, when follow, a channel of new
	// flows that is closed when ctx ends or the subscriber falls behind.
	Flows(ctx context.Context, follow bool) ([]Flow, <-chan Flow)
	ReloadPolicies(ctx context.Context) error
	Resync(ctx context.Context) error
}

// ErrNotFound is returned by backends for unknown objects (404).
var ErrNotFound = errors.New("not found")

// BadRequestError is a client error (400).
type BadRequestError struct{ Err error }

func (e *BadRequestError) Error() string { return e.Err.Error() }
func (e *BadRequestError) Unwrap() error { return e.Err }

// Options configure a Server.
type Options struct {
	Socket string
	// Group may write besides root; its gid also owns the socket when the
	// group exists.
	Group string
	// Mode is the socket's mode; 0660 when zero.
	Mode   os.FileMode
	Logger *slog.Logger
}

// Server serves the API on a unix socket.
type Server struct {
	opts     Options
	backend  Backend
	log      *slog.Logger
	writeGID int // -1 when the group does not exist
	ln       net.Listener
	srv      *http.Server

	mu      sync.Mutex
	streams map[uint32]int // open observe streams by peer uid
}

// maxStreamsPerUser bounds the observe streams one uid holds at once.
// Each has its own queue (FlowHub's 1024 records) and costs the event
// reader a send per record; a per-user bound keeps one group member from
// growing the daemon without end, and from taking the places of others.
const maxStreamsPerUser = 32

const (
	readTimeout  = 10 * time.Second
	idleTimeout  = time.Minute
	writeTimeout = 30 * time.Second
)

// ErrAlreadyRunning means another daemon answers on the socket.
var ErrAlreadyRunning = errors.New("another membraned is serving the API socket")

// NewServer creates the socket (removing a stale one) and prepares the
// server; Serve runs it.
func NewServer(opts Options, backend Backend) (*Server, error) {
	if opts.Mode == 0 {
		opts.Mode = 0o660
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, backend: backend, log: opts.Logger, writeGID: -1, streams: map[uint32]int{}}
	if opts.Group != "" {
		if g, err := user.LookupGroup(opts.Group); err == nil {
			if gid, err := strconv.Atoi(g.Gid); err == nil {
				s.writeGID = gid
			}
		} else {
			// Its members would meet a bare permission error on the
			// socket; say why where the operator looks.
			s.log.Warn("api_group does not exist: only root may use the API (create the group, or set api_group in membrane.hcl)",
				"group", opts.Group, "socket", opts.Socket, "err", err)
		}
	}
	ln, err := Listen(opts.Socket)
	if err != nil {
		return nil, err
	}
	gid := -1
	mode := opts.Mode
	if s.writeGID >= 0 {
		gid = s.writeGID
	} else if mode&0o070 != 0 && mode&0o007 == 0 {
		// Without the group nobody but root may connect.
		mode &^= 0o070
	}
	if err := os.Chmod(opts.Socket, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("api socket: %w", err)
	}
	if gid >= 0 {
		if err := os.Chown(opts.Socket, 0, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("api socket: %w", err)
		}
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		// Requests are small: one that has not arrived whole in readTimeout
		// (a client stopped partway through its body) is answered 400 and
		// its connection freed, and so is a kept-alive connection idle for
		// idleTimeout. A stream (observe) is not cut: net/http lifts the
		// read limit once the request has been read.
		ReadTimeout: readTimeout,
		IdleTimeout: idleTimeout,
		// A client that stops reading does not hold its handler and the
		// answer for ever. observe, which has no end, applies it to each
		// write instead.
		WriteTimeout: writeTimeout,
		ConnContext:  connContext,
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// Listen opens a unix socket at path. A socket file left by a crashed
// daemon is replaced; a live one is ErrAlreadyRunning.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("api socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("api socket %s exists and is not a socket; remove it or set api_socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%w (%s)", ErrAlreadyRunning, path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("api socket %s: probing existing socket: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale api socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	// Close must not unlink: on a restart the new daemon replaces the file.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	return ln, nil
}

// Serve answers requests until ctx ends, then shuts down gracefully and
// removes the socket file.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(sctx)
	_ = s.srv.Close()
	_ = os.Remove(s.opts.Socket)
	return nil
}

func (s *Server) routes() http.Handler {
	mux := paramMux{ServeMux: http.NewServeMux(), patterns: new([]string)}
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.backend.Status())
	})
	mux.HandleFunc("GET /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, nonNil(s.backend.Endpoints()))
	})
	mux.HandleFunc("GET /v1/endpoints/{ref}", func(w http.ResponseWriter, r *http.Request) {
		ep, ok := s.backend.Endpoint(r.PathValue("ref"))
		if !ok {
			writeError(w, http.StatusNotFound, fmt.Errorf("no endpoint %q: it is neither an endpoint number, a container name or ID, nor a prefix of one container's ID, 4 characters or more (try `membrane endpoint list`)", r.PathValue("ref")))
			return
		}
		writeJSON(w, http.StatusOK, ep)
	})
	mux.HandleFunc("GET /v1/identities", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, nonNil(s.backend.Identities()))
	})
	mux.HandleFunc("GET /v1/policy", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.backend.Policy())
	})
	mux.HandleFunc("POST /v1/policy/trace", func(w http.ResponseWriter, r *http.Request) {
		var req TraceRequest
		if err := decodeBody(w, r, &req); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("trace request: %w", err))
			return
		}
		res, err := s.backend.Trace(r.Context(), req)
		if err != nil {
			writeBackendError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("GET /v1/observe", s.observe, observeParams...)
	mux.HandleFunc("POST /v1/policy/reload", s.writer(func(w http.ResponseWriter, r *http.Request) {
		if err := s.backend.ReloadPolicies(r.Context()); err != nil {
			writeBackendError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, s.backend.Policy())
	}))
	mux.HandleFunc("POST /v1/resync", s.writer(func(w http.ResponseWriter, r *http.Request) {
		if err := s.backend.Resync(r.Context()); err != nil {
			writeBackendError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, s.backend.Status())
	}))
	return s.guard(mux)
}

// paramMux registers handlers with the query parameters they take, and
// answers the requests no route takes as the API answers every error.
type paramMux struct {
	*http.ServeMux
	patterns *[]string // as registered, for the 404's list of routes
}

// ServeHTTP answers a request that no route takes (no route for its path:
// 404; not with its method: 405, with Allow) in JSON with a message, as
// every other error: net/http's plain-text "404 page not found" would
// reach the CLI as a bare status.
func (m paramMux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// net/http redirects a path not written clean ("/v1//status") in
	// HTML; the API answers JSON alone, and a client of it writes its
	// paths clean.
	// Like the mux, on the path as escaped: an escaped slash ("..%2Fx" of
	// an endpoint reference) is inside one segment.
	if ep := r.URL.EscapedPath(); cleanPath(ep) != ep && r.Method != http.MethodConnect {
		clean := cleanPath(r.URL.Path)
		msg := fmt.Sprintf("no API route %s %s", r.Method, r.URL.Path)
		u := *r.URL
		u.Path, u.RawPath = clean, ""
		if _, pattern := m.Handler(&http.Request{Method: r.Method, URL: &u, Host: r.Host}); pattern != "" {
			writeError(w, http.StatusNotFound, fmt.Errorf("%s: did you mean %s?", msg, clean))
			return
		}
		writeError(w, http.StatusNotFound, fmt.Errorf("%s: membraned's API has %s", msg, strings.Join(*m.patterns, ", ")))
		return
	}
	h, pattern := m.Handler(r)
	if pattern != "" {
		m.ServeMux.ServeHTTP(w, r)
		return
	}
	// net/http's own answer, for its status and Allow.
	rec := &missRecorder{header: http.Header{}, code: http.StatusNotFound}
	h.ServeHTTP(rec, r)
	if rec.code == http.StatusMethodNotAllowed {
		allow := rec.header.Get("Allow")
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: method not allowed; %s takes %s", r.Method, r.URL.Path, r.URL.Path, allow))
		return
	}
	writeError(w, http.StatusNotFound, fmt.Errorf("no API route %s %s: membraned's API has %s (is membrane newer than membraned? `membrane version` and `membraned --version` tell)", r.Method, r.URL.Path, strings.Join(*m.patterns, ", ")))
}

// cleanPath is p as net/http's ServeMux cleans it: rooted, without
// doubled slashes or dot segments, with a trailing slash kept.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if strings.HasSuffix(p, "/") && np != "/" {
		np += "/"
	}
	return np
}

// missRecorder keeps what net/http's 404 and 405 handlers set.
type missRecorder struct {
	header http.Header
	code   int
}

func (m *missRecorder) Header() http.Header         { return m.header }
func (m *missRecorder) Write(p []byte) (int, error) { return len(p), nil }
func (m *missRecorder) WriteHeader(code int)        { m.code = code }

// HandleFunc registers h for pattern; a request with a query parameter
// not in known, or one given twice, gets 400 before h runs.
func (m paramMux) HandleFunc(pattern string, h http.HandlerFunc, known ...string) {
	*m.patterns = append(*m.patterns, pattern)
	m.ServeMux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if err := checkQuery(r, known...); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		if r.Method == http.MethodGet && hasBody(w, r) {
			writeError(w, http.StatusBadRequest, fmt.Errorf("GET %s takes no body: options of a read are query parameters", r.URL.Path))
			return
		}
		h(w, r)
	})
}

// hasBody reports whether r came with a body of at least one byte.
func hasBody(w http.ResponseWriter, r *http.Request) bool {
	if r.ContentLength > 0 {
		return true
	}
	var b [1]byte
	n, _ := http.MaxBytesReader(w, r.Body, 1).Read(b[:])
	return n > 0
}

// observeParams are the query parameters of GET /v1/observe.
var observeParams = []string{"follow", "verdict", "container", "type", "direction", "last"}

// guard refuses browser-originated requests and logs the peer.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Origin") != "" || r.Header.Get("Referer") != "" {
			writeError(w, http.StatusForbidden, errors.New("requests with Origin or Referer are refused: the API is for the local membrane CLI"))
			return
		}
		// A page that rebinds its name to a local port forwarded to the
		// socket sends same-origin GETs, which carry no Origin and, when
		// it asks, no Referer; its Host is still its own name.
		if !localHost(r.Host) {
			writeError(w, http.StatusForbidden, fmt.Errorf("the Host header %q is refused: the API answers Host membraned (the CLI's) or localhost", r.Host))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// localHost reports whether a request's Host is one a local client sends:
// the CLI's "membraned", "localhost" (curl --unix-socket), or none
// (HTTP/1.0).
func localHost(h string) bool {
	return h == "" || h == apiHost || h == "localhost"
}

// writer wraps a handler that changes state: the peer must be root or in
// the API group.
func (s *Server) writer(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cred, ok := r.Context().Value(credKey{}).(*PeerCred)
		if !ok || !s.mayWrite(cred) {
			who := "unknown peer"
			if cred != nil {
				who = fmt.Sprintf("uid %d", cred.UID)
			}
			s.log.Warn("api write refused", "peer", who, "path", r.URL.Path)
			writeError(w, http.StatusForbidden, fmt.Errorf("permission denied for %s: changing membraned needs root or membership of group %q", who, s.opts.Group))
			return
		}
		// These requests take no fields: one sent with some (an option
		// this daemon does not know) must not be carried out without it.
		var none struct{}
		if err := decodeBody(w, r, &none); err != nil && !errors.Is(err, errEmptyBody) {
			writeError(w, http.StatusBadRequest, fmt.Errorf("%s takes no fields, send {} or nothing: %w", r.URL.Path, err))
			return
		}
		h(w, r)
	}
}

func (s *Server) mayWrite(c *PeerCred) bool {
	if c == nil {
		return false
	}
	if c.UID == 0 {
		return true
	}
	if s.writeGID < 0 {
		return false
	}
	if c.GID == uint32(s.writeGID) {
		return true
	}
	for _, g := range c.Groups {
		if g == uint32(s.writeGID) {
			return true
		}
	}
	return false
}

func (s *Server) observe(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := ObserveFilter{Verdict: q.Get("verdict"), Container: q.Get("container"), Type: q.Get("type"), Direction: q.Get("direction")}
	switch v := q.Get("follow"); v {
	case "", "0", "false":
	case "1", "true":
		f.Follow = true
	default:
		// Not taken for "no": a client that meant to follow would get the
		// backlog and an end, and think nothing more came.
		writeError(w, http.StatusBadRequest, fmt.Errorf("follow %q: must be true or false (1 or 0)", v))
		return
	}
	if !ValidVerdict(f.Verdict) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("verdict %q: must be dropped, audit or allowed (l3), or forwarded, denied or error (l7)", f.Verdict))
		return
	}
	if !ValidFlowType(f.Type) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("type %q: must be l3, l7 or all", f.Type))
		return
	}
	if !ValidDirection(f.Direction) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("direction %q: must be egress or ingress", f.Direction))
		return
	}
	f.resolve = s.backend.Endpoint
	if v := q.Get("last"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("last %q: must be a count", v))
			return
		}
		f.Last = n
	}
	uid, ok := s.openStream(r)
	if !ok {
		writeError(w, http.StatusTooManyRequests, fmt.Errorf("uid %d holds %d observe streams, the most one user may: end one first", uid, maxStreamsPerUser))
		return
	}
	defer s.closeStream(uid)
	backlog, live := s.backend.Flows(r.Context(), f.Follow)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Trailer", StreamErrorTrailer)
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	rc := http.NewResponseController(w)
	// send writes one record, which must go through within the server's
	// write limit (a stream has no end to hold the whole answer to).
	send := func(f *Flow) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(s.srv.WriteTimeout))
		return enc.Encode(f) == nil
	}
	var sel []Flow
	for i := range backlog {
		if f.Matches(&backlog[i]) {
			sel = append(sel, backlog[i])
		}
	}
	if f.Last > 0 && len(sel) > f.Last {
		sel = sel[len(sel)-f.Last:]
	}
	for i := range sel {
		if !send(&sel[i]) {
			return
		}
	}
	if rc.Flush() != nil || !f.Follow || live == nil {
		return
	}
	for fw := range live {
		if !f.Matches(&fw) {
			continue
		}
		if !send(&fw) || rc.Flush() != nil {
			return
		}
	}
	if r.Context().Err() == nil {
		// The channel closed under a live request: the follower did not
		// keep up and lost its subscription (FlowHub.Publish never waits).
		s.log.Warn("observe follower fell behind, its stream ends", "peer", peerName(r))
		w.Header().Set(StreamErrorTrailer, "the stream fell behind: the daemon does not wait for a reader that is slower than the events, and dropped this one; start again, and narrow it with --verdict, --container or --type")
	}
}

// openStream takes one of the peer's observe stream places; false when it
// holds them all. A peer without credentials counts as one user.
func (s *Server) openStream(r *http.Request) (uint32, bool) {
	uid := uint32(math.MaxUint32)
	if cred, ok := r.Context().Value(credKey{}).(*PeerCred); ok {
		uid = cred.UID
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams[uid] >= maxStreamsPerUser {
		return uid, false
	}
	s.streams[uid]++
	return uid, true
}

func (s *Server) closeStream(uid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams[uid]--; s.streams[uid] == 0 {
		delete(s.streams, uid)
	}
}

// peerName is who sent r, for the log.
func peerName(r *http.Request) string {
	if cred, ok := r.Context().Value(credKey{}).(*PeerCred); ok {
		return fmt.Sprintf("uid %d pid %d", cred.UID, cred.PID)
	}
	return "unknown peer"
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, ErrorBody{Error: err.Error()})
}

func writeBackendError(w http.ResponseWriter, err error) {
	var bre *BadRequestError
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, err)
	case errors.As(err, &bre):
		writeError(w, http.StatusBadRequest, err)
	default:
		writeError(w, http.StatusInternalServerError, err)
	}
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
