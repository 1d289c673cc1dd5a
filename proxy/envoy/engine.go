package envoy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/proxy"
)

// Config configures the Envoy engine.
type Config struct {
	// Port is the proxy port Envoy listens on (transparent).
	Port uint16
	// RunDir holds xds.sock, admin.sock, bootstrap.json and the access log
	// FIFO; default /run/membrane/envoy.
	RunDir string
	// EnvoyPath is the binary; default `envoy` from PATH.
	EnvoyPath string
	// Unit, when set, is the systemd unit that runs Envoy (shipped as
	// membrane-envoy.service); the engine starts it with systemctl instead of
	// supervising a child process.
	Unit string
	// MaxConnections bounds the client connections Envoy holds open at
	// once (0: no bound).
	MaxConnections int
	// NoProcess serves xDS and writes the bootstrap but starts no Envoy
	// (tests; an Envoy managed elsewhere).
	NoProcess bool
	// FixedUpstream is the conformance test mode (see Options).
	FixedUpstream netip.AddrPort
	Resolver      proxy.Resolver
	Logger        *slog.Logger
	Events        proxy.EventSink
}

// Engine is the managed-Envoy engine; it implements proxy.Engine.
type Engine struct {
	cfg      Config
	log      *slog.Logger
	xds      *XDS
	metrics  *proxy.Metrics
	restarts prometheus.Counter
	rejected prometheus.GaugeFunc
	sup      *Supervisor
	fifo     *os.File
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	paths    Paths
	// resolver is the last Update's, which names the identities of the
	// no-policy chain's requests (identify).
	resolver atomic.Pointer[proxy.Resolver]
}

// Paths are the files the engine keeps in RunDir.
type Paths struct {
	XDSSocket, AdminSocket, Bootstrap, AccessLog string
}

// PathsIn names the files in dir.
func PathsIn(dir string) Paths {
	return Paths{
		XDSSocket:   filepath.Join(dir, "xds.sock"),
		AdminSocket: filepath.Join(dir, "admin.sock"),
		Bootstrap:   filepath.Join(dir, "bootstrap.json"),
		AccessLog:   filepath.Join(dir, "access.log.fifo"),
	}
}

var (
	_ proxy.Engine          = (*Engine)(nil)
	_ proxy.ProblemReporter = (*Engine)(nil)
)

// New serves xDS, writes the bootstrap, publishes the first snapshot and
// starts Envoy (unless NoProcess). It returns once all that is under way;
// WaitReady waits for Envoy to serve.
func New(cfg Config) (*Engine, error) {
	if cfg.Port == 0 {
		return nil, errors.New("envoy engine: no proxy port")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.RunDir == "" {
		cfg.RunDir = "/run/membrane/envoy"
	}
	if !cfg.NoProcess && cfg.Unit == "" && cfg.EnvoyPath == "" {
		p, err := exec.LookPath("envoy")
		if err != nil {
			return nil, fmt.Errorf("envoy engine: %w (install Envoy or set l7 { engine = \"builtin\" })", err)
		}
		cfg.EnvoyPath = p
	}
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("envoy engine: %w", err)
	}
	e := &Engine{
		cfg:     cfg,
		log:     cfg.Logger.With("subsys", "proxy", "engine", "envoy"),
		metrics: proxy.NewMetrics("envoy"),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "membrane_proxy_envoy_restarts_total",
			Help: "Times the supervised Envoy process exited and was restarted.",
		}),
		paths: PathsIn(cfg.RunDir),
	}
	e.rejected = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "membrane_proxy_envoy_config_rejected",
		Help: "Resource types (listeners, routes, clusters) whose last update Envoy rejected; it keeps those it accepted before.",
	}, func() float64 { return float64(len(e.xds.Rejected())) })
	ok := false
	defer func() {
		if !ok {
			e.Close()
		}
	}()
	if err := e.openAccessLog(); err != nil {
		return nil, err
	}
	var err error
	if e.xds, err = ServeXDS(e.paths.XDSSocket, e.log); err != nil {
		return nil, err
	}
	if err := e.Update(cfg.Resolver); err != nil {
		return nil, err
	}
	boot, err := Bootstrap(e.paths.XDSSocket, e.paths.AdminSocket, e.cfg.MaxConnections)
	if err != nil {
		return nil, fmt.Errorf("envoy engine: making the bootstrap: %w", err)
	}
	if err := writeFileAtomic(e.paths.Bootstrap, boot); err != nil {
		return nil, fmt.Errorf("envoy engine: writing the bootstrap: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	switch {
	case cfg.NoProcess:
	case cfg.Unit != "":
		if out, err := exec.Command("systemctl", "start", cfg.Unit).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("envoy engine: systemctl start %s: %w: %s", cfg.Unit, err, out)
		}
	default:
		e.sup = &Supervisor{
			Path:        cfg.EnvoyPath,
			Args:        []string{"-c", e.paths.Bootstrap, "--disable-hot-restart", "--log-level", "warn"},
			AdminSocket: e.paths.AdminSocket,
			Logger:      e.log,
			OnExit:      func(error) { e.restarts.Inc() },
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			if err := e.sup.Run(ctx); err != nil {
				e.log.Error("envoy supervisor stopped", "err", err)
			}
		}()
	}
	ok = true
	return e, nil
}

// Paths returns where the engine keeps its files.
func (e *Engine) Paths() Paths { return e.paths }

// WaitReady waits until Envoy's admin /ready answers LIVE.
func (e *Engine) WaitReady(ctx context.Context) error {
	for {
		err := Ready(ctx, e.paths.AdminSocket)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for envoy: %w (last: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// openAccessLog makes the FIFO Envoy writes its access log to and reads it.
// Opened read-write, so an Envoy restart (writer gone) is not an EOF.
func (e *Engine) openAccessLog() error {
	p := e.paths.AccessLog
	_ = os.Remove(p)
	if err := unix.Mkfifo(p, 0o600); err != nil {
		return fmt.Errorf("envoy engine: access log fifo: %w", err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("envoy engine: access log fifo: %w", err)
	}
	e.fifo = f
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			ev, err := ParseAccessLog(sc.Bytes())
			if err != nil {
				e.log.Debug("unreadable access log line", "err", err)
				continue
			}
			e.identify(&ev)
			e.metrics.Observe(&ev)
			if e.cfg.Events != nil {
				e.cfg.Events(ev)
			}
		}
	}()
	return nil
}

// identify gives an event of the no-policy chain the identities of its
// ends, as the built-in engine's events have them. That chain is the
// listener's default, for every connection no other chain matches, so its
// access log cannot name them (it writes 0 and 0; every other chain names
// its own, and 0 is no identity a chain is made for); they are read from
// the last Update's resolver by the request's addresses, which judges
// them as of when the line is read: an address that changed hands in
// between is named as its new holder.
func (e *Engine) identify(ev *proxy.Event) {
	if ev.SrcIdentity != 0 || ev.DstIdentity != 0 {
		return
	}
	r := e.resolver.Load()
	if r == nil || !ev.Src.IsValid() || !ev.Dst.IsValid() {
		return
	}
	d, _ := (*r).Resolve(ev.Src, ev.Dst) // the identities come with an error too
	ev.SrcIdentity, ev.DstIdentity = d.SrcIdentity, d.DstIdentity
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Name implements proxy.Engine.
func (e *Engine) Name() string { return "envoy" }

// Port implements proxy.Engine.
func (e *Engine) Port() uint16 { return e.cfg.Port }

// Update implements proxy.Engine: translate and publish. On error the last
// good snapshot stays in force.
func (e *Engine) Update(r proxy.Resolver) error {
	if r != nil {
		e.resolver.Store(&r)
	}
	res, err := Translate(r, Options{Port: e.cfg.Port, FixedUpstream: e.cfg.FixedUpstream, AccessLogPath: e.paths.AccessLog})
	if err != nil {
		return fmt.Errorf("envoy engine: translating policy (the previous one stays in force): %w", err)
	}
	for _, w := range res.Warnings {
		e.log.Warn(w)
	}
	v, err := e.xds.Set(res)
	if err != nil {
		return fmt.Errorf("envoy engine: publishing policy (the previous one stays in force): %w", err)
	}
	e.log.Debug("xds snapshot published", "version", v, "listeners", len(res.Listeners), "clusters", len(res.Clusters))
	return nil
}

// XDS is the engine's xDS server.
func (e *Engine) XDS() *XDS { return e.xds }

// Collectors implements proxy.Engine.
func (e *Engine) Collectors() []prometheus.Collector {
	return append(e.metrics.Collectors(), e.restarts, e.rejected)
}

// Problems implements proxy.ProblemReporter: what keeps Envoy from
// enforcing the policy membraned translated last. The supervised process
// exiting or not answering /ready (Supervisor.Problem), the unit's Envoy
// not answering /ready, and resources Envoy rejected (XDS.Rejected: it
// goes on with those it accepted before).
func (e *Engine) Problems() []string {
	var out []string
	switch {
	case e.cfg.NoProcess:
	case e.sup != nil:
		if p := e.sup.Problem(); p != "" {
			out = append(out, p)
		}
	case e.cfg.Unit != "":
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := Ready(ctx, e.paths.AdminSocket)
		cancel()
		if err != nil {
			out = append(out, fmt.Sprintf("the Envoy of unit %s does not serve (%v); connections sent to the L7 proxy fail until it does (systemctl status %s)", e.cfg.Unit, err, e.cfg.Unit))
		}
	}
	if e.xds != nil {
		out = append(out, e.xds.Rejected()...)
	}
	return out
}

// Close implements proxy.Engine: stops Envoy (or its unit), the xDS server
// and the access log reader.
func (e *Engine) Close() error {
	if e.cancel != nil {
		e.cancel()
	}
	var errs []error
	if e.cfg.Unit != "" && !e.cfg.NoProcess {
		if out, err := exec.Command("systemctl", "stop", e.cfg.Unit).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("systemctl stop %s: %w: %s", e.cfg.Unit, err, out))
		}
	}
	if e.xds != nil {
		e.xds.Close()
	}
	if e.fifo != nil {
		e.fifo.Close()
	}
	e.wg.Wait()
	return errors.Join(errs...)
}
