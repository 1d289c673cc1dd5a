package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"

	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/nsinfo"
)

// Config configures a Source. The zero value works against the local dockerd.
type Config struct {
	// Host is the Docker endpoint (unix:///var/run/docker.sock); "" uses
	// DOCKER_HOST or Docker's default.
	Host string
	// Logger gets the source's logs; nil discards them.
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the reconnect delay (defaults 100ms, 5s).
	MinBackoff, MaxBackoff time.Duration
	// Workers is how many containers are inspected at once (default 8).
	Workers int
	// RecheckInterval is how often every container is looked at again
	// through the ordered per-container queue, as a safety net against a
	// state the events did not announce (default 5m; negative disables).
	RecheckInterval time.Duration
}

// Source follows one dockerd. Create it with New; call Run once.
type Source struct {
	cfg   Config
	log   *slog.Logger
	queue *endpoint.Queue[endpoint.Event]
	table *endpoint.Table

	progress *endpoint.Progress

	// inspectNetns reads a network namespace (tests: one that fails);
	// nil means nsinfo.Inspect.
	inspectNetns func(path string) (nsinfo.Info, error)

	mu    sync.Mutex
	ctrs  map[string]*record // running containers by id
	stale []string           // ids the last resync could not read whole

	// iccMu guards noICCByID: whether a network (by id) has
	// inter-container communication disabled. A network's options are
	// fixed when it is created and a recreated network has a new id, so
	// each network is inspected once.
	iccMu     sync.Mutex
	noICCByID map[string]bool

	// follower is the running Run's, for Recheck (nil before Run).
	follower atomic.Pointer[endpoint.Follower[events.Message]]
}

// dockerNet is the Docker network behind one container interface.
type dockerNet struct {
	name, id string
	noICC    bool
	// addrs are the addresses Docker gave the container on it.
	addrs []netip.Addr
}

// record is what the source knows of one running container.
type record struct {
	id, name, image string
	labels          map[string]string
	pid             int
	paused          bool
	joins           string // owner container id for network_mode container:X
	mode            endpoint.NetworkMode
	ns              nsinfo.Info
	macNetwork      map[string]dockerNet // MAC -> the Docker network of that interface
	created         time.Time
	// stale: why ns and mode are not current (the netns could not be
	// read); they are then the last read, filled in by keepNetns.
	stale string
	// networkNone: started with --network none, so Docker made none of
	// its interfaces (a CNI plugin's, put there later, are all it has).
	networkNone bool
}

// keepNetns gives r, a record whose netns could not be read, the network
// state last read (old, nil when none).
func keepNetns(r, old *record) {
	if r == nil || r.stale == "" || old == nil {
		return
	}
	r.ns, r.mode = old.ns, old.mode
}

// maxJoinHops bounds the chain of containers joined to one that joined
// another (network_mode container:X) followed to the namespace's owner.
const maxJoinHops = 8

// errSkip says dockerd answered with an error about one container (not a
// connection problem): keep what is known of it and carry on, rather than
// reconnecting forever over one broken container.
var errSkip = errors.New("container skipped")

// transient reports whether err means dockerd is unreachable (reconnect) as
// opposed to an error response about one container.
func transient(err error) bool {
	return client.IsErrConnectionFailed(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// New returns a source for the configured dockerd.
func New(cfg Config) *Source {
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.RecheckInterval == 0 {
		cfg.RecheckInterval = 5 * time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	q := endpoint.NewQueue[endpoint.Event]()
	return &Source{
		cfg:       cfg,
		log:       log.With("subsys", "runtime.docker"),
		queue:     q,
		table:     endpoint.NewTable(q),
		progress:  endpoint.NewProgress(),
		ctrs:      map[string]*record{},
		noICCByID: map[string]bool{},
	}
}

var _ endpoint.Source = (*Source)(nil)

// Events delivers endpoint changes in order; closed when Run returns.
func (s *Source) Events() <-chan endpoint.Event { return s.queue.Events() }

// Snapshot returns the endpoints as last reported.
func (s *Source) Snapshot() []endpoint.Endpoint { return s.table.Snapshot() }

// Synced is closed after the first full list has been reported.
func (s *Source) Synced() <-chan struct{} { return s.progress.Synced() }

// Progress tells whether the runtime is followed now.
func (s *Source) Progress() *endpoint.Progress { return s.progress }

// Reconnects counts the sessions after the first (for status and tests).
func (s *Source) Reconnects() int { return s.progress.Reconnects() }

// ContainerByNetns returns the endpoint whose network namespace has inode
// ino; the link watcher uses it to name the container behind a new veth.
func (s *Source) ContainerByNetns(ino uint64) (endpoint.Endpoint, bool) {
	return s.table.FindByNetns(ino)
}

// Recheck has container id read again soon, in order with its events: the
// link watcher saw a veth appear in its network namespace, which no Docker
// event announces (a CNI plugin's, Nomad's bridge networking). It is read
// now, and again after 1 and 5 seconds: the plugin gives the interface its
// address after the veth is in place, and no event announces that either.
func (s *Source) Recheck(id string) {
	f := s.follower.Load()
	if f == nil {
		return
	}
	f.Nudge(id)
	for _, d := range recheckAgain {
		time.AfterFunc(d, func() { f.Nudge(id) })
	}
}

// recheckAgain are the delays after which Recheck reads a container again.
var recheckAgain = []time.Duration{time.Second, 5 * time.Second}

// Run follows dockerd until ctx is done; see the package doc.
func (s *Source) Run(ctx context.Context) error {
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if s.cfg.Host != "" {
		opts = append(opts, client.WithHost(s.cfg.Host))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return fmt.Errorf("docker client (check DOCKER_HOST or the configured host): %w", err)
	}
	defer cli.Close()

	f := &endpoint.Follower[events.Message]{
		Queue: s.queue, Log: s.log, Peer: "dockerd",
		MinBackoff: s.cfg.MinBackoff, MaxBackoff: s.cfg.MaxBackoff,
		Workers: s.cfg.Workers, RecheckInterval: s.cfg.RecheckInterval,
		Stream: "events stream",
		Subscribe: func(ctx context.Context) (<-chan events.Message, <-chan error, error) {
			return subscribe(ctx, cli)
		},
		Key:      containerOf,
		Resync:   func(ctx context.Context) error { return s.resync(ctx, cli) },
		Refresh:  func(ctx context.Context, id string) error { return s.refresh(ctx, cli, id) },
		Stale:    s.takeStale,
		Recheck:  func(ctx context.Context) ([]string, error) { return s.recheckIDs(ctx, cli) },
		Progress: s.progress,
	}
	s.follower.Store(f)
	return f.Run(ctx)
}

var eventFilter = func() filters.Args {
	f := filters.NewArgs(filters.Arg("type", "container"), filters.Arg("type", "network"))
	for _, e := range []string{"create", "start", "die", "destroy", "rename", "pause", "unpause", "connect", "disconnect"} {
		f.Add("event", e)
	}
	return f
}()

// subscribe checks that dockerd answers and subscribes to its events, with
// a Since a second in the past (see the package doc).
func subscribe(ctx context.Context, cli *client.Client) (<-chan events.Message, <-chan error, error) {
	if _, err := cli.Ping(ctx); err != nil {
		return nil, nil, fmt.Errorf("ping dockerd: %w", err)
	}
	since := time.Now().Add(-time.Second)
	msgs, errs := cli.Events(ctx, events.ListOptions{
		Filters: eventFilter,
		Since:   strconv.FormatInt(since.Unix(), 10) + "." + fmt.Sprintf("%09d", since.Nanosecond()),
	})
	return msgs, errs, nil
}

// recheckIDs returns every known and every listed container id.
func (s *Source) recheckIDs(ctx context.Context, cli *client.Client) ([]string, error) {
	list, err := cli.ContainerList(ctx, container.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	s.mu.Lock()
	ids := make([]string, 0, len(s.ctrs)+len(list))
	for id := range s.ctrs {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for _, c := range list {
		ids = append(ids, c.ID)
	}
	return ids, nil
}

func containerOf(m events.Message) string {
	switch m.Type {
	case events.ContainerEventType:
		return m.Actor.ID
	case events.NetworkEventType:
		return m.Actor.Attributes["container"]
	}
	return ""
}

// resync lists and inspects every running container and makes the table
// hold exactly their endpoints.
func (s *Source) resync(ctx context.Context, cli *client.Client) error {
	list, err := cli.ContainerList(ctx, container.ListOptions{})
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	recs := make([]*record, len(list))
	errs := make([]error, len(list))
	endpoint.Parallel(len(list), s.cfg.Workers, func(i int) {
		recs[i], errs[i] = s.inspect(ctx, cli, list[i].ID)
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	ctrs := map[string]*record{}
	s.stale = nil
	for i, r := range recs {
		if errors.Is(errs[i], errSkip) {
			if old := s.ctrs[list[i].ID]; old != nil {
				ctrs[old.id] = old
			}
			continue
		}
		if errs[i] != nil {
			return errs[i]
		}
		if r != nil {
			keepNetns(r, s.ctrs[r.id])
			ctrs[r.id] = r
			if r.stale != "" {
				s.stale = append(s.stale, r.id)
			}
		}
	}
	s.ctrs = ctrs
	s.pruneNetworks()
	var eps []endpoint.Endpoint
	for id := range ctrs {
		if ep, ok := s.endpointLocked(id); ok {
			eps = append(eps, ep)
		}
	}
	s.table.Replace(eps)
	s.log.Info("resynced with dockerd", "containers", len(ctrs), "endpoints", len(eps))
	return nil
}

// refresh re-inspects one container and reports what changed.
func (s *Source) refresh(ctx context.Context, cli *client.Client, id string) error {
	r, err := s.inspect(ctx, cli, id)
	if errors.Is(err, errSkip) {
		return nil
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.ctrs[id]
	if r == nil {
		delete(s.ctrs, id)
	} else {
		keepNetns(r, old)
		s.ctrs[id] = r
	}
	affected := map[string]bool{id: true}
	if old != nil && old.joins != "" {
		affected[old.joins] = true
	}
	if r != nil && r.joins != "" {
		affected[r.joins] = true
	}
	for ep := range affected {
		s.updateLocked(ep, false)
	}
	if r != nil && r.stale != "" {
		return fmt.Errorf("container %.12s: %s: %w", id, r.stale, endpoint.ErrRetry)
	}
	return nil
}

// takeStale returns the ids the last resync could not read whole.
func (s *Source) takeStale() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.stale
	s.stale = nil
	return out
}

func (s *Source) updateLocked(id string, resync bool) {
	if ep, ok := s.endpointLocked(id); ok {
		s.table.Set(ep, resync)
	} else {
		s.table.Delete(id, resync)
	}
}

// endpointLocked builds the endpoint owned by container id, if it owns one.
func (s *Source) endpointLocked(id string) (endpoint.Endpoint, bool) {
	o := s.ctrs[id]
	if o == nil || o.joins != "" {
		return endpoint.Endpoint{}, false
	}
	var joined []*record
	for _, r := range s.ctrs {
		// A container whose owner restarted after it joined is in the
		// owner's old namespace, not in this one: its labels would give
		// the owner an identity no container of this namespace has.
		if r.joins == id && !leftBehind(r, o) {
			joined = append(joined, r)
		}
	}
	sort.Slice(joined, func(i, j int) bool { return joined[i].id < joined[j].id })
	ep := endpoint.Endpoint{
		ID:          id,
		Runtime:     endpoint.RuntimeDocker,
		Netns:       o.ns.Netns,
		NetworkMode: o.mode,
		State:       endpoint.StateRunning,
	}
	if o.paused {
		ep.State = endpoint.StatePaused
	}
	var joinedLabels []map[string]string
	for _, r := range append([]*record{o}, joined...) {
		ep.Containers = append(ep.Containers, endpoint.Container{
			ID: r.id, Name: r.name, Labels: maps.Clone(r.labels), Image: r.image, Pid: r.pid,
		})
		if r != o {
			joinedLabels = append(joinedLabels, r.labels)
		}
	}
	ep.Labels = endpoint.DeriveLabels(endpoint.MergeLabels(o.labels, joinedLabels), o.name, "")
	for _, itf := range o.ns.Interfaces {
		n := o.macNetwork[itf.MAC.String()]
		itf.Network, itf.NetworkID, itf.NoICC = n.name, n.id, n.noICC
		// Only the addresses Docker gave this interface are the
		// container's. One with NET_ADMIN can put any address on its
		// interfaces, another container's or the host's among them;
		// reported, it would take that address's identity. A
		// --network none container has no interface of Docker's: those
		// it has, a CNI plugin gave it with their addresses (decision 70).
		if !o.networkNone {
			itf.Addrs = slices.DeleteFunc(slices.Clone(itf.Addrs), func(p netip.Prefix) bool {
				return !slices.Contains(n.addrs, p.Addr())
			})
		}
		ep.Interfaces = append(ep.Interfaces, itf)
	}
	ep.Unenforced = slices.Clone(o.ns.Unpaired)
	ep.Stale = o.stale
	return ep, true
}

// leftBehind reports whether joined, a container that joined owner's
// network namespace, is known to be in another one: Docker does not restart
// the containers joined to one that restarts, and they stay in its old
// namespace (from which Docker removed its interfaces). Unknown inodes (a
// process or namespace that could not be read) count as the same.
func leftBehind(joined, owner *record) bool {
	return joined.ns.Netns.Inode != 0 && owner.ns.Netns.Inode != 0 && joined.ns.Netns.Inode != owner.ns.Netns.Inode
}

// noICC reports whether Docker network id has inter-container
// communication disabled (the bridge driver's enable_icc option, which
// dockerd sets on the default bridge from its --icc flag too). Errors are
// errSkip or a reason to reconnect, as inspect's.
func (s *Source) noICC(ctx context.Context, cli *client.Client, id string) (bool, error) {
	if id == "" {
		return false, nil
	}
	s.iccMu.Lock()
	v, ok := s.noICCByID[id]
	s.iccMu.Unlock()
	if ok {
		return v, nil
	}
	nw, err := cli.NetworkInspect(ctx, id, network.InspectOptions{})
	if err != nil {
		if cerrdefs.IsNotFound(err) || !transient(err) {
			// Removed meanwhile (the container's die or disconnect
			// event follows), or refused: not cached, asked again next
			// time.
			s.log.Debug("inspecting a container's network", "network", id, "err", err)
			return false, nil
		}
		return false, fmt.Errorf("inspect network %.12s: %w", id, err)
	}
	if icc, err := strconv.ParseBool(nw.Options["com.docker.network.bridge.enable_icc"]); err == nil {
		v = !icc
	}
	s.iccMu.Lock()
	s.noICCByID[id] = v
	s.iccMu.Unlock()
	return v, nil
}

// pruneNetworks forgets the networks no known container is on (deleted
// ones, whose ids never come back). Called with s.mu held, on resyncs.
func (s *Source) pruneNetworks() {
	used := map[string]bool{}
	for _, r := range s.ctrs {
		for _, n := range r.macNetwork {
			used[n.id] = true
		}
	}
	s.iccMu.Lock()
	maps.DeleteFunc(s.noICCByID, func(id string, _ bool) bool { return !used[id] })
	s.iccMu.Unlock()
}

// inspect returns the record of a running container, or nil when it is not
// running (or gone). Errors are errSkip (dockerd answered with an error about
// this container) or a reason to reconnect.
func (s *Source) inspect(ctx context.Context, cli *client.Client, id string) (*record, error) {
	info, err := cli.ContainerInspect(ctx, id)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil, nil
		}
		if !transient(err) {
			s.log.Warn("dockerd refused to inspect a container; keeping what is known of it", "container", id, "err", err)
			return nil, errSkip
		}
		return nil, fmt.Errorf("inspect container %.12s: %w", id, err)
	}
	if info.ContainerJSONBase == nil || info.State == nil || !info.State.Running || info.State.Restarting {
		// Restarting counts as running for Docker, but the old sandbox is
		// being torn down and the new one does not exist yet: the start
		// event that ends the restart brings the endpoint back.
		return nil, nil
	}
	r := &record{
		id:         info.ID,
		name:       strings.TrimPrefix(info.Name, "/"),
		pid:        info.State.Pid,
		paused:     info.State.Paused,
		macNetwork: map[string]dockerNet{},
	}
	if t, err := time.Parse(time.RFC3339Nano, info.Created); err == nil {
		r.created = t
	}
	if info.Config != nil {
		r.labels = maps.Clone(info.Config.Labels)
		r.image = info.Config.Image
	}
	if r.labels == nil {
		r.labels = map[string]string{}
	}
	var mode container.NetworkMode
	if info.HostConfig != nil {
		mode = info.HostConfig.NetworkMode
	}
	r.networkNone = mode.IsNone()
	if mode.IsContainer() {
		// The owner of the namespace: a container that joins one which
		// joined another is in that other's namespace.
		target := mode.ConnectedContainer()
		for hop := 0; ; hop++ {
			owner, err := cli.ContainerInspect(ctx, target)
			if err != nil {
				if cerrdefs.IsNotFound(err) {
					return nil, nil
				}
				if !transient(err) {
					s.log.Warn("dockerd refused to inspect a network owner; keeping what is known", "container", id, "owner", target, "err", err)
					return nil, errSkip
				}
				return nil, fmt.Errorf("inspect network owner %s of %.12s: %w", target, id, err)
			}
			if owner.ContainerJSONBase == nil {
				return nil, nil
			}
			if owner.HostConfig == nil || !owner.HostConfig.NetworkMode.IsContainer() || hop == maxJoinHops {
				r.joins = owner.ID
				// The namespace it is in: the owner's while both run,
				// but a restarted owner gets a new one and leaves it
				// behind in the old (endpointLocked compares them).
				if r.pid != 0 {
					if ino, err := nsinfo.Inode(nsinfo.PidPath(r.pid)); err == nil {
						r.ns.Netns = endpoint.Netns{Path: nsinfo.PidPath(r.pid), Inode: ino}
					}
				}
				return r, nil
			}
			target = owner.HostConfig.NetworkMode.ConnectedContainer()
		}
	}
	if info.NetworkSettings != nil {
		for name, n := range info.NetworkSettings.Networks {
			if n != nil && n.MacAddress != "" {
				noICC, err := s.noICC(ctx, cli, n.NetworkID)
				if err != nil {
					return nil, err
				}
				dn := dockerNet{name: name, id: n.NetworkID, noICC: noICC}
				assigned := []string{n.IPAddress, n.GlobalIPv6Address}
				if n.IPAMConfig != nil {
					assigned = append(assigned, n.IPAMConfig.LinkLocalIPs...) // --link-local-ip
				}
				for _, a := range assigned {
					if ip, err := netip.ParseAddr(a); err == nil {
						dn.addrs = append(dn.addrs, ip.Unmap())
					}
				}
				r.macNetwork[strings.ToLower(n.MacAddress)] = dn
			}
		}
	}
	var key string
	if info.NetworkSettings != nil {
		key = info.NetworkSettings.SandboxKey
	}
	inspectNetns := s.inspectNetns
	if inspectNetns == nil {
		inspectNetns = nsinfo.Inspect
	}
	ns, err := inspectNetns(key)
	// A veth caught half set up (or a sandbox being replaced) has no host
	// peer yet: look again briefly before reporting it without one.
	for try := 0; err == nil && len(ns.Unpaired) > 0 && try < 10; try++ {
		time.Sleep(20 * time.Millisecond)
		ns, err = inspectNetns(key)
	}
	if err == nil && len(ns.Unpaired) > 0 {
		s.log.Warn("container interface without a host-side veth", "container", r.id, "netns", key, "why", ns.Unpaired)
	}
	if key == "" || err != nil {
		// unreadable: the namespace exists (or may) but could not be
		// read; gone: it does not, the container stopped meanwhile (its
		// die event follows).
		var unreadable error
		switch {
		case r.pid != 0:
			var perr error
			ns, perr = inspectNetns(nsinfo.PidPath(r.pid))
			if errors.Is(perr, nsinfo.ErrGone) {
				s.log.Debug("container netns gone", "container", r.id, "sandbox_key", key, "err", err, "pid_err", perr)
				return nil, nil
			}
			unreadable = perr
		case key != "" && !errors.Is(err, nsinfo.ErrGone):
			unreadable = err
		default:
			return nil, nil
		}
		if unreadable != nil {
			// Removing its endpoint would drop its endpoint entries
			// until its next event: it keeps the network state last
			// read (refresh, resync) and is read again.
			r.stale = "network namespace unreadable: " + unreadable.Error()
			r.mode = endpoint.ModeNone
			if mode.IsHost() {
				r.mode = endpoint.ModeHost
			}
			return r, nil
		}
	}
	r.ns = ns
	switch {
	case ns.Host || mode.IsHost():
		r.mode = endpoint.ModeHost
		r.ns.Interfaces = nil
	case len(ns.Interfaces) == 0:
		r.mode = endpoint.ModeNone
	default:
		r.mode = endpoint.ModeBridge
	}
	return r, nil
}
