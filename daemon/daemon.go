package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/membrane-fw/membrane/bpf"
	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/daemon/identity"
	"github.com/membrane-fw/membrane/daemon/metrics"
	"github.com/membrane-fw/membrane/daemon/notify"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/runtime/docker"
	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/linkwatch"
)

// Options are the parts of a daemon that tests and later phases replace.
type Options struct {
	Logger *slog.Logger
	// ProxyPort maps an L7 ruleset id to the proxy's listening port. nil
	// (membraned): the daemon starts the L7 engine of cfg.L7 and uses its
	// port. Tests that set it get no L7 engine.
	ProxyPort func(l7 uint32) uint16
	// Ready is called once after the first full reconcile (besides
	// READY=1 to systemd).
	Ready func()

	hooks *testHooks
}

// testHooks are where this package's tests step into a running daemon, to
// make a race that is otherwise a matter of microseconds happen every
// time. nil in membraned.
type testHooks struct {
	// beforePolicyWatch runs before the policy directory's watch is set up.
	beforePolicyWatch func()
	// beforeLastGoodSave runs in the goroutine that saves an accepted
	// set as the last good one, before it does.
	beforeLastGoodSave func()
	// syncWait replaces syncWait when not zero.
	syncWait time.Duration
	// holdEndpointEvents, when not nil, keeps the runtime sources' events
	// from the reconcile loop until it is closed (they list, but their
	// events stay queued).
	holdEndpointEvents <-chan struct{}
}

// Run runs membraned until ctx is cancelled. The datapath stays in place
// when it returns.
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	notifier := notify.New(log)

	var auditSel *policies.Selector
	if cfg.AuditSelector != "" {
		s, err := policies.ParseSelector(cfg.AuditSelector)
		if err != nil {
			return fmt.Errorf("audit_selector: %w", err)
		}
		auditSel = &s
	}

	ids, err := identity.Open(cfg.StateDir, identity.Options{Grace: cfg.IdentityGrace})
	if err != nil {
		return err
	}
	// The proxy's upstream sockets are this process's (the built-in engine)
	// or its Envoy child's, which stays in this cgroup: only their
	// from-proxy marks are taken. An Envoy in a unit of its own is in the
	// unit's cgroup, followed as the unit restarts (unitCgroup).
	var proxyCgroup uint64
	var envoyUnit *unitCgroup
	if cfg.L7.EnvoyUnit == "" {
		if proxyCgroup, err = bpf.SelfCgroupID(); err != nil {
			log.Warn("no cgroup v2 id for this process: from-proxy marks are taken from any socket", "err", err)
			proxyCgroup = 0
		}
	} else {
		envoyUnit = &unitCgroup{unit: cfg.L7.EnvoyUnit, path: envoyUnitCgroupPath, log: log}
		proxyCgroup = envoyUnit.id()
		envoyUnit.cur = proxyCgroup
	}
	dp, err := bpf.Open(bpf.Config{
		ProxyCgroup:      proxyCgroup,
		PinDir:           cfg.BPFFSDir,
		Attach:           bpf.AttachMode(cfg.Attach),
		MaxEndpoints:     uint32(cfg.Maps.Endpoints),
		MaxIPCache:       uint32(cfg.Maps.IPCache),
		MaxIdentities:    uint32(cfg.Maps.Policy),
		MaxPolicyEntries: uint32(cfg.Maps.PolicyEntries),
		MaxConntrack:     uint32(cfg.Maps.Conntrack),
		EventsBytes:      uint32(cfg.Maps.Events),
		UnknownEndpoint:  bpf.UnknownVerdict(cfg.UnknownEndpoint),
		AllowSample:      uint32(cfg.FlowSample),
		Logger:           log,
	})
	if err != nil {
		return fmt.Errorf("opening the datapath: %w", err)
	}
	defer dp.Close() // keeps pins and attachments: enforcement continues

	filter := endpoint.LabelFilter{Include: cfg.Labels.Include, Exclude: cfg.Labels.Exclude}

	r := newReconciler(cfg, log.With("subsys", "reconcile"), dp, ids, filter, auditSel, opts.ProxyPort)
	r.notifier = notifier
	r.lastGood = newLastGoodStore(cfg.StateDir)
	if opts.hooks != nil {
		r.lastGood.beforeSave = opts.hooks.beforeLastGoodSave
		if opts.hooks.syncWait > 0 {
			r.syncWait = opts.hooks.syncWait
		}
		r.holdEndpointEvents = opts.hooks.holdEndpointEvents
	}
	r.onReady = opts.Ready

	m := metrics.New(metrics.Sampler{Verdicts: r.sampleVerdicts, Maps: r.sampleMaps, EventsLost: r.sampleEventsLost})
	r.metrics = m

	// The L7 proxy listens before the first policy with a proxy port is
	// written. When it cannot start, the datapath still redirects to the
	// configured port, where the bridge program finds no listener and
	// drops: L7-ruled connections fail closed, everything else runs.
	if opts.ProxyPort == nil {
		p, err := startL7(ctx, cfg, log, r.publishL7)
		if err != nil {
			log.Error("the L7 proxy did not start; connections that policies send to it are dropped", "err", err)
			r.problem("l7", "l7-start", err)
			port := uint16(cfg.L7.Port)
			r.proxyPort = func(uint32) uint16 { return port }
		} else {
			defer p.close()
			r.l7 = p
			r.proxyPort = p.proxyPort
			m.Registry.MustRegister(p.engine.Collectors()...)
		}
	}

	var sources []namedSource
	var resolvers []linkwatch.Resolver
	if cfg.Docker.Enabled {
		host := ""
		if cfg.Docker.Socket != "" {
			host = "unix://" + cfg.Docker.Socket
		}
		ds := docker.New(docker.Config{Host: host, Logger: log})
		sources = append(sources, namedSource{name: "docker", src: ds})
		resolvers = append(resolvers, ds)
	}
	sources = append(sources, extraSources(cfg, log, &resolvers)...)
	bridges := cfg.Bridges
	if bridges == nil {
		bridges = linkwatch.DefaultBridges
	}
	r.bridges = bridges
	lw, err := linkwatch.New(linkwatch.Config{Bridges: bridges, Resolvers: resolvers, Logger: log})
	if err != nil {
		return err
	}
	r.sources = sources
	r.links = lw

	srv, err := api.NewServer(api.Options{Socket: cfg.APISocket, Group: cfg.APIGroup, Logger: log.With("subsys", "api")}, &backend{r: r})
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	// STOPPING=1 as soon as the signal arrives, not after the drain. It is
	// one of the group's goroutines so that Run cannot return (and the
	// process exit) before it is sent.
	g.Go(func() error {
		<-gctx.Done()
		notifier.Stopping()
		return nil
	})
	for _, s := range sources {
		g.Go(func() error {
			if err := s.src.Run(gctx); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			return nil
		})
	}
	g.Go(func() error { return lw.Run(gctx) })
	// The first load waits for the watch (see watchPolicyDir).
	policyWatching := make(chan struct{})
	r.policyWatching = policyWatching
	g.Go(func() error {
		if opts.hooks != nil && opts.hooks.beforePolicyWatch != nil {
			opts.hooks.beforePolicyWatch()
		}
		return watchPolicyDir(gctx, cfg.PolicyDir, cfg.PolicyDebounce, r.requestPolicyReload, func() { close(policyWatching) }, log)
	})
	g.Go(func() error { return watchHangup(gctx, cfg, r, log) })
	g.Go(func() error { return watchHostAddrs(gctx, r.requestHostAddrs, log) })
	g.Go(func() error { return r.readEvents(gctx) })
	g.Go(func() error { return srv.Serve(gctx) })
	g.Go(func() error {
		if err := m.Serve(gctx, cfg.Metrics.Listen, log); err != nil {
			return fmt.Errorf("metrics on %s: %w", cfg.Metrics.Listen, err)
		}
		return nil
	})
	if envoyUnit != nil {
		envoyUnit.set = dp.SetProxyCgroup
		g.Go(func() error { return envoyUnit.run(gctx, time.Second) })
	}
	g.Go(func() error { return r.run(gctx) })
	err = g.Wait()
	if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)) {
		log.Info("membraned stopped; the datapath stays in place")
		return nil
	}
	return err
}

// Cleanup is `membraned --cleanup` (package removal): CleanupDatapath,
// then bpf.DetachEverywhere, then CleanupL7. CleanupDatapath works from
// the pins of cfg's bpffs directory; what they do not name (pins of a
// bpffs_dir the configuration no longer says, or removed by hand while a
// tc filter stayed) would go on judging every packet with no daemon to
// update its maps, so every Membrane program still on an interface comes
// off too.
func Cleanup(cfg *config.Config) error {
	return errors.Join(CleanupDatapath(cfg), bpf.DetachEverywhere(), CleanupL7())
}

// CleanupDatapath removes every pin and attachment of the datapath in cfg's
// bpffs directory (container and bridge programs) and the API socket.
func CleanupDatapath(cfg *config.Config) error {
	err := bpf.Cleanup(cfg.BPFFSDir)
	return errors.Join(err, removeSocket(cfg.APISocket))
}

// removeSocket removes the API socket at path, and nothing else: an
// api_socket that names another file (a slip in membrane.hcl) is left,
// with an error.
func removeSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("not removing %s: api_socket names a file that is not a socket", path)
	}
	return os.Remove(path)
}

// CleanupL7 removes the host-wide state of the L7 path: the proxy's policy
// routing, the nftables table membrane_l7 and the Envoy run directory.
// Every membraned on the host shares them (tests run several daemons with
// their own pin directories and call CleanupDatapath only).
func CleanupL7() error { return cleanupL7() }

type namedSource struct {
	name string
	src  endpoint.Source
}

// extraSources builds the runtime sources besides Docker (containerd).
func extraSources(cfg *config.Config, log *slog.Logger, resolvers *[]linkwatch.Resolver) []namedSource {
	return containerdSource(cfg, log, resolvers)
}

// watchHangup handles SIGHUP, the conventional "reload" signal. Its
// default action ends the process, and systemd counts that a clean exit
// (no restart): an operator's `kill -HUP` would leave membraned stopped and
// new containers' veths without programs. It reloads the policy directory
// instead, and checks the configuration file, which is read at start
// only: an invalid one is reported (log and status) with its positions,
// since the next restart would fail on it; the running configuration
// stays.
func watchHangup(ctx context.Context, cfg *config.Config, r *reconciler, log *slog.Logger) error {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	defer signal.Stop(ch)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		}
		log.Info("SIGHUP: reloading the policy directory", "dir", cfg.PolicyDir)
		r.requestPolicyReload(ctx, time.Now())
		if cfg.Path == "" {
			continue
		}
		_, err := config.Load(cfg.Path, true)
		if err != nil {
			log.Error("SIGHUP: the configuration file is invalid; the running configuration stays, but membraned would not start with it", "config", cfg.Path, "err", err.Error())
			err = fmt.Errorf("configuration %s is invalid; the running configuration stays, but membraned would not start with it: %w", cfg.Path, err)
		} else {
			log.Info("SIGHUP: the configuration file is valid; it is read at start only: restart membraned to apply changes to it", "config", cfg.Path)
		}
		r.send(ctx, func(context.Context) error {
			if err != nil {
				r.problems["config"] = err.Error()
			} else {
				delete(r.problems, "config")
			}
			r.publish()
			return nil
		})
	}
}

// sinceMillis is a helper for logging durations.
func sinceMillis(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }
