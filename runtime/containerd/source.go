package containerd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/nsinfo"
)

// DefaultAddress is containerd's default socket.
const DefaultAddress = "/run/containerd/containerd.sock"

// Config configures a Source.
type Config struct {
	// Address is containerd's socket; "" means DefaultAddress.
	Address string
	// Namespaces to watch; empty means every namespace.
	Namespaces []string
	// SkipMoby skips the "moby" namespace (Docker's containers, which
	// runtime/docker reports with their Docker names and labels).
	SkipMoby bool
	Logger   *slog.Logger
	// MinBackoff and MaxBackoff bound the reconnect delay (defaults 100ms, 5s).
	MinBackoff, MaxBackoff time.Duration
	// Workers is how many containers are read at once (default 8).
	Workers int
	// RecheckInterval is how often every container is read again through
	// the ordered per-container queue, as a safety net (default 5m;
	// negative disables).
	RecheckInterval time.Duration
}

// Source follows one containerd.
type Source struct {
	cfg   Config
	log   *slog.Logger
	queue *endpoint.Queue[endpoint.Event]
	table *endpoint.Table

	progress *endpoint.Progress

	// stream opens the event stream (tests: a slow server); nil means
	// the client's Subscribe.
	stream func(ctx context.Context, cli *containerd.Client, filters ...string) (<-chan *events.Envelope, <-chan error)
	// inspect reads a network namespace (tests: one that fails); nil
	// means nsinfo.Inspect.
	inspect func(path string) (nsinfo.Info, error)

	mu      sync.Mutex
	ctrs    map[string]*record            // running containers by "ns/id"
	pending map[uint64]endpoint.Container // created containers by their spec netns inode
	byKey   map[string]uint64             // "ns/id" -> pending inode
	stale   []string                      // keys the last resync could not read whole
}

type record struct {
	key, ns, id string
	name, image string
	labels      map[string]string
	created     time.Time
	pid         int
	paused      bool
	host        bool
	info        nsinfo.Info
	// stale: why info is not current (the netns could not be read); info
	// is then the last read, filled in by keepInfo.
	stale string
}

// keepInfo gives r, a record whose netns could not be read, the network
// state last read (old, nil when none).
func keepInfo(r, old *record) {
	if r == nil || r.stale == "" || old == nil {
		return
	}
	r.info, r.host = old.info, old.host
}

// New returns a source.
func New(cfg Config) *Source {
	if cfg.Address == "" {
		cfg.Address = DefaultAddress
	}
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
		cfg: cfg, log: log.With("subsys", "runtime.containerd"),
		queue: q, table: endpoint.NewTable(q), progress: endpoint.NewProgress(),
		ctrs: map[string]*record{}, pending: map[uint64]endpoint.Container{},
		byKey: map[string]uint64{},
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

// Reconnects counts the sessions after the first.
func (s *Source) Reconnects() int { return s.progress.Reconnects() }

// ContainerByNetns returns the endpoint whose netns has inode ino, or, for a
// container created but not started yet, an endpoint holding just that
// container (no interfaces, ID "NAMESPACE/ID").
func (s *Source) ContainerByNetns(ino uint64) (endpoint.Endpoint, bool) {
	if ep, ok := s.table.FindByNetns(ino); ok {
		return ep, true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.pending[ino]
	if !ok {
		return endpoint.Endpoint{}, false
	}
	return endpoint.Endpoint{
		ID: c.Namespace + "/" + c.ID, Runtime: endpoint.RuntimeContainerd,
		Containers: []endpoint.Container{c}, Netns: endpoint.Netns{Inode: ino},
	}, true
}

func (s *Source) watched(ns string) bool {
	if ns == "moby" && s.cfg.SkipMoby {
		return false
	}
	return len(s.cfg.Namespaces) == 0 || slices.Contains(s.cfg.Namespaces, ns)
}

// Run follows containerd until ctx is done.
func (s *Source) Run(ctx context.Context) error {
	cli, err := containerd.New(s.cfg.Address)
	if err != nil {
		return fmt.Errorf("containerd client for %s: %w", s.cfg.Address, err)
	}
	defer cli.Close()
	f := &endpoint.Follower[*events.Envelope]{
		Queue: s.queue, Log: s.log, Peer: "containerd",
		MinBackoff: s.cfg.MinBackoff, MaxBackoff: s.cfg.MaxBackoff,
		Workers: s.cfg.Workers, RecheckInterval: s.cfg.RecheckInterval,
		Stream: "event stream",
		Subscribe: func(ctx context.Context) (<-chan *events.Envelope, <-chan error, error) {
			return s.subscribe(ctx, cli)
		},
		Key:    s.keyOf,
		Resync: func(ctx context.Context) error { return s.resync(ctx, cli) },
		Refresh: func(ctx context.Context, key string) error {
			ns, id := splitKey(key)
			return s.refresh(ctx, cli, ns, id)
		},
		Stale:    s.takeStale,
		Recheck:  func(ctx context.Context) ([]string, error) { return s.recheckKeys(ctx, cli) },
		Progress: s.progress,
	}
	return f.Run(ctx)
}

var topics = []string{
	`topic=="/tasks/start"`, `topic=="/tasks/exit"`, `topic=="/tasks/delete"`,
	`topic=="/tasks/paused"`, `topic=="/tasks/resumed"`,
	`topic=="/containers/create"`, `topic=="/containers/update"`, `topic=="/containers/delete"`,
}

// The probe that confirms a subscription: an event of this topic, in this
// namespace, carrying a token of the subscription (wrapperspb.StringValue).
const (
	probeTopic     = "/membrane/subscribed"
	probeNamespace = "membrane"
)

// probeWait bounds the wait for the probe; probeEvery is how often it is
// published again meanwhile (one published before the server registered
// the subscriber reaches nobody).
const (
	probeWait  = 10 * time.Second
	probeEvery = 250 * time.Millisecond
)

// subscribe checks that containerd answers (within 5 s), subscribes to the
// topics above, and returns once the subscription is live. containerd's
// Subscribe returns as soon as the request is sent, before the server has
// registered the subscriber: an event published in between reaches no one,
// and a container that started then, after the list, would wait for the
// recheck. So subscribe publishes a probe event until it comes back
// through the stream: every event published after that is delivered, and
// the list (Resync) that follows sees everything published before.
// Events that arrive before the probe precede the list and are dropped
// (the list reads their containers). A containerd that refuses the probe
// (Publish fails) is followed unconfirmed, with a warning.
func (s *Source) subscribe(ctx context.Context, cli *containerd.Client) (<-chan *events.Envelope, <-chan error, error) {
	vctx, vcancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := cli.Version(vctx)
	vcancel()
	if err != nil {
		return nil, nil, fmt.Errorf("containerd version: %w", err)
	}
	filters := append(slices.Clone(topics), `topic=="`+probeTopic+`"`)
	var envs <-chan *events.Envelope
	var errs <-chan error
	if s.stream != nil {
		envs, errs = s.stream(ctx, cli, filters...)
	} else {
		envs, errs = cli.Subscribe(ctx, filters...)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	pctx := namespaces.WithNamespace(ctx, probeNamespace)
	publish := func() error {
		return cli.EventService().Publish(pctx, probeTopic, wrapperspb.String(token))
	}
	if err := publish(); err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		s.log.Warn("containerd refused the subscription probe; following its events unconfirmed (a container started while the subscription is set up waits for the recheck)", "err", err)
		return envs, errs, nil
	}
	deadline := time.NewTimer(probeWait)
	defer deadline.Stop()
	again := time.NewTicker(probeEvery)
	defer again.Stop()
	for {
		select {
		case env := <-envs:
			if isProbe(env, token) {
				return envs, errs, nil
			}
		case err := <-errs:
			if err == nil {
				err = errors.New("event stream closed")
			}
			return nil, nil, fmt.Errorf("event stream: %w", err)
		case <-again.C:
			if err := publish(); err != nil {
				return nil, nil, fmt.Errorf("publishing the subscription probe: %w", err)
			}
		case <-deadline.C:
			return nil, nil, fmt.Errorf("the event subscription did not deliver its probe within %v", probeWait)
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// isProbe reports whether env is a subscription probe, with token when
// token is not "" (any subscriber's, this daemon's or another's, otherwise).
func isProbe(env *events.Envelope, token string) bool {
	if env == nil || env.Topic != probeTopic || env.Namespace != probeNamespace {
		return false
	}
	if token == "" {
		return true
	}
	v, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		return false
	}
	sv, ok := v.(*wrapperspb.StringValue)
	return ok && sv.GetValue() == token
}

// keyOf returns "ns/id" of the container an event of a watched namespace
// concerns, or "".
func (s *Source) keyOf(env *events.Envelope) string {
	if env == nil || !s.watched(env.Namespace) || isProbe(env, "") {
		return ""
	}
	if id := containerOf(env.Event); id != "" {
		return env.Namespace + "/" + id
	}
	return ""
}

// recheckKeys returns every listed and every known container key.
func (s *Source) recheckKeys(ctx context.Context, cli *containerd.Client) ([]string, error) {
	keys, err := s.listKeys(ctx, cli)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	for k := range s.ctrs {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	return keys, nil
}

// listKeys lists "ns/id" of every container in the watched namespaces.
func (s *Source) listKeys(ctx context.Context, cli *containerd.Client) ([]string, error) {
	nss, err := cli.NamespaceService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var keys []string
	for _, ns := range nss {
		if !s.watched(ns) {
			continue
		}
		cs, err := cli.Containers(namespaces.WithNamespace(ctx, ns))
		if err != nil {
			return nil, fmt.Errorf("list containers in namespace %s: %w", ns, err)
		}
		for _, c := range cs {
			keys = append(keys, ns+"/"+c.ID())
		}
	}
	return keys, nil
}

// splitKey splits a container key "ns/id". Every key is made by joining a
// namespace and a container ID, and neither holds a '/': containerd takes
// only identifiers ([A-Za-z0-9] runs joined by '.', '_' or '-') as either,
// so the first '/' is the one that joined them.
func splitKey(key string) (ns, id string) {
	ns, id, _ = strings.Cut(key, "/")
	return ns, id
}

func containerOf(a typeurl.Any) string {
	if a == nil {
		return ""
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		return ""
	}
	// The task events name their container ContainerID (their ID is an
	// exec's), the container events ID.
	switch e := v.(type) {
	case *apievents.TaskStart, *apievents.TaskExit, *apievents.TaskDelete, *apievents.TaskPaused, *apievents.TaskResumed:
		return e.(interface{ GetContainerID() string }).GetContainerID()
	case *apievents.ContainerCreate, *apievents.ContainerUpdate, *apievents.ContainerDelete:
		return e.(interface{ GetID() string }).GetID()
	}
	return ""
}

func (s *Source) resync(ctx context.Context, cli *containerd.Client) error {
	keys, err := s.listKeys(ctx, cli)
	if err != nil {
		return err
	}
	type item struct{ ns, id string }
	var items []item
	for _, k := range keys {
		ns, id := splitKey(k)
		items = append(items, item{ns, id})
	}
	type result struct {
		rec     *record
		pending *endpoint.Container
		ino     uint64
		err     error
	}
	res := make([]result, len(items))
	endpoint.Parallel(len(items), s.cfg.Workers, func(i int) {
		r := &res[i]
		r.rec, r.pending, r.ino, r.err = s.read(ctx, cli, items[i].ns, items[i].id)
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	ctrs := map[string]*record{}
	pending := map[uint64]endpoint.Container{}
	byKey := map[string]uint64{}
	s.stale = nil
	for i, r := range res {
		if errors.Is(r.err, errSkip) {
			if o := s.ctrs[items[i].ns+"/"+items[i].id]; o != nil {
				ctrs[o.key] = o
			}
			continue
		}
		if r.err != nil {
			return r.err
		}
		if r.rec != nil {
			keepInfo(r.rec, s.ctrs[r.rec.key])
			ctrs[r.rec.key] = r.rec
			if r.rec.stale != "" {
				s.stale = append(s.stale, r.rec.key)
			}
		}
		if r.pending != nil {
			pending[r.ino] = *r.pending
			byKey[r.pending.Namespace+"/"+r.pending.ID] = r.ino
		}
	}
	s.ctrs, s.pending, s.byKey = ctrs, pending, byKey
	eps := s.endpointsLocked()
	s.table.Replace(eps)
	s.log.Info("resynced with containerd", "containers", len(s.ctrs), "endpoints", len(eps))
	return nil
}

// refresh re-reads one container and reports the endpoints it changed.
func (s *Source) refresh(ctx context.Context, cli *containerd.Client, ns, id string) error {
	rec, pend, ino, err := s.read(ctx, cli, ns, id)
	if errors.Is(err, errSkip) {
		return nil
	}
	if err != nil {
		return err
	}
	key := ns + "/" + id
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.byKey[key]; ok {
		delete(s.pending, old)
		delete(s.byKey, key)
	}
	if pend != nil {
		s.pending[ino] = *pend
		s.byKey[key] = ino
	}
	if rec == nil {
		delete(s.ctrs, key)
	} else {
		keepInfo(rec, s.ctrs[key])
		s.ctrs[key] = rec
	}
	// Grouping by netns can move containers between endpoints (the owner
	// leaves, another becomes the owner), so recompute them all and let the
	// table report only what differs.
	s.table.Converge(s.endpointsLocked())
	if rec != nil && rec.stale != "" {
		return fmt.Errorf("%s: %s: %w", key, rec.stale, endpoint.ErrRetry)
	}
	return nil
}

// takeStale returns the keys the last resync could not read whole.
func (s *Source) takeStale() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.stale
	s.stale = nil
	return out
}

// endpointsLocked groups the running containers into endpoints.
func (s *Source) endpointsLocked() []endpoint.Endpoint {
	groups := map[string][]*record{}
	for _, r := range s.ctrs {
		// Host-mode containers are each their own endpoint, as is one
		// whose netns was never read.
		g := r.key
		if !r.host && r.info.Netns.Inode != 0 {
			g = fmt.Sprintf("ino:%d", r.info.Netns.Inode)
		}
		groups[g] = append(groups[g], r)
	}
	var eps []endpoint.Endpoint
	for _, rs := range groups {
		sort.Slice(rs, func(i, j int) bool {
			if !rs[i].created.Equal(rs[j].created) {
				return rs[i].created.Before(rs[j].created)
			}
			return rs[i].key < rs[j].key
		})
		o := rs[0]
		ep := endpoint.Endpoint{
			ID: o.key, Runtime: endpoint.RuntimeContainerd, Netns: o.info.Netns, State: endpoint.StateRunning,
		}
		if o.paused {
			ep.State = endpoint.StatePaused
		}
		var joined []map[string]string
		for _, r := range rs {
			ep.Containers = append(ep.Containers, endpoint.Container{
				ID: r.id, Name: r.name, Labels: maps.Clone(r.labels), Image: r.image, Pid: r.pid, Namespace: r.ns,
			})
			if r != o {
				joined = append(joined, r.labels)
			}
		}
		ep.Labels = endpoint.DeriveLabels(endpoint.MergeLabels(o.labels, joined), o.name, o.ns)
		switch {
		case o.host:
			ep.NetworkMode = endpoint.ModeHost
		case len(o.info.Interfaces) == 0:
			ep.NetworkMode = endpoint.ModeNone
		default:
			ep.NetworkMode = endpoint.ModeBridge
			ep.Interfaces = append(ep.Interfaces, o.info.Interfaces...)
		}
		if !o.host {
			ep.Unenforced = slices.Clone(o.info.Unpaired)
		}
		ep.Stale = o.stale
		eps = append(eps, ep)
	}
	sort.Slice(eps, func(i, j int) bool { return eps[i].ID < eps[j].ID })
	return eps
}

// read returns the record of a running container (nil when it has no
// running task) and, for a container whose spec names a netns path, the
// container and that netns's inode (so the link watcher can name it before
// the task starts). Only errors that mean containerd is unreachable are
// returned.
func (s *Source) read(ctx context.Context, cli *containerd.Client, ns, id string) (*record, *endpoint.Container, uint64, error) {
	ctx = namespaces.WithNamespace(ctx, ns)
	c, err := cli.LoadContainer(ctx, id)
	if err != nil {
		return nil, nil, 0, s.classify(err, ns, id)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil, nil, 0, s.classify(err, ns, id)
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		s.log.Warn("container spec unreadable; ignoring the container", "namespace", ns, "container", id, "err", err)
		return nil, nil, 0, nil
	}
	hasNet, nsPath := false, ""
	if spec.Linux != nil {
		for _, n := range spec.Linux.Namespaces {
			if n.Type == specs.NetworkNamespace {
				hasNet, nsPath = true, n.Path
			}
		}
	}
	name := id
	if n := info.Labels["nerdctl/name"]; n != "" {
		name = n
	}
	ct := endpoint.Container{ID: id, Name: name, Labels: maps.Clone(info.Labels), Image: info.Image, Namespace: ns}
	if ct.Labels == nil {
		ct.Labels = map[string]string{}
	}
	var pend *endpoint.Container
	var pendIno uint64
	if nsPath != "" {
		if ino, err := nsinfo.Inode(nsPath); err == nil {
			pend, pendIno = &ct, ino
		}
	}

	task, err := c.Task(ctx, nil)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil, pend, pendIno, nil
		}
		return nil, nil, 0, s.classify(err, ns, id)
	}
	st, err := task.Status(ctx)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil, pend, pendIno, nil
		}
		return nil, nil, 0, s.classify(err, ns, id)
	}
	if st.Status != containerd.Running && st.Status != containerd.Paused && st.Status != containerd.Pausing {
		return nil, pend, pendIno, nil
	}
	r := &record{
		key: ns + "/" + id, ns: ns, id: id, name: name, image: info.Image, labels: ct.Labels,
		created: info.CreatedAt, pid: int(task.Pid()), paused: st.Status != containerd.Running,
	}
	inspect := s.inspect
	if inspect == nil {
		inspect = nsinfo.Inspect
	}
	var ni nsinfo.Info
	switch {
	case !hasNet:
		r.host = true
		ni, err = inspect(nsinfo.PidPath(r.pid))
	case nsPath != "":
		ni, err = inspect(nsPath)
		if err != nil {
			ni, err = inspect(nsinfo.PidPath(r.pid))
		}
	default:
		ni, err = inspect(nsinfo.PidPath(r.pid))
	}
	if errors.Is(err, nsinfo.ErrGone) {
		s.log.Debug("container netns gone (exited?)", "namespace", ns, "container", id, "err", err)
		return nil, pend, pendIno, nil
	}
	if err != nil {
		// The task runs and its namespace exists, but could not be read:
		// its endpoint keeps the network state last read (refresh,
		// resync) and is read again; removing it would drop its
		// endpoint entries until its next event.
		r.stale = "network namespace unreadable: " + err.Error()
		return r, pend, pendIno, nil
	}
	if ni.Host {
		r.host = true
		ni.Interfaces = nil
	}
	r.info = ni
	return r, pend, pendIno, nil
}

// errSkip says containerd answered with an error about one container (not
// a connection problem): keep what is known of it and carry on.
var errSkip = errors.New("container skipped")

// classify turns "not found" into no error (the container is gone), an
// error about this one container into errSkip, and a connection problem
// into a reason to reconnect.
func (s *Source) classify(err error, ns, id string) error {
	switch {
	case errdefs.IsNotFound(err):
		return nil
	case errdefs.IsUnavailable(err) || errdefs.IsCanceled(err) || errdefs.IsDeadlineExceeded(err) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("read container %s/%s: %w", ns, id, err)
	}
	s.log.Warn("containerd refused to read a container; keeping what is known of it", "namespace", ns, "container", id, "err", err)
	return errSkip
}
