package daemon

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/netip"
	"os"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/membrane-fw/membrane/bpf"
	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/daemon/identity"
	"github.com/membrane-fw/membrane/daemon/metrics"
	"github.com/membrane-fw/membrane/daemon/notify"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/linkwatch"
)

// syncWait is how long the first reconcile waits for the runtime sources'
// first list before membraned reports ready without them. Until they have
// listed, the pinned datapath is left as the previous daemon wrote it:
// nothing is pruned on partial knowledge.
const syncWait = 20 * time.Second

// reconciler is the only writer of kernel state. Everything in the "loop
// state" block is touched by its goroutine alone; readers see the
// immutable view it publishes after every change.
type reconciler struct {
	cfg       *config.Config
	log       *slog.Logger
	dp        *bpf.Datapath
	ids       *identity.Store
	filter    endpoint.LabelFilter
	auditSel  *policies.Selector
	proxyPort func(uint32) uint16
	notifier  *notify.Notifier
	onReady   func()
	metrics   *metrics.Metrics
	sources   []namedSource
	links     *linkwatch.Watcher
	flows     *api.FlowHub
	bridges   []string // managed bridge patterns
	l7        *l7      // nil: no L7 proxy (tests, engine failed to start)
	startedAt time.Time

	// syncWait is the const syncWait but in tests; holdEndpointEvents
	// (tests) holds the sources' events until closed (testHooks).
	syncWait           time.Duration
	holdEndpointEvents <-chan struct{}

	reqs chan request
	// policyWatching is closed once the policy directory is watched (nil:
	// not waited for).
	policyWatching <-chan struct{}

	// loop state
	eps      map[string]*epState // by runtime endpoint id
	veths    map[int]linkwatch.Event
	nextEpID uint32
	// restoredIDs are the endpoint ids the pinned endpoints map held at
	// start, by host ifindex: an endpoint found again on one of those veths
	// keeps its id (decision 66) until the first full resync, which drops
	// them. restoredTaken are those already given back.
	restoredIDs   map[int]uint32
	restoredHost  map[string]uint32 // host-network endpoints' (hostIDsFile)
	restoredTaken map[uint32]bool
	set           *policies.Set
	setFiles      []string
	setLoaded     time.Time
	// setSources are the sources of set as they were parsed (nil for a
	// set adopted from the last good snapshot). setUnwritten: set was
	// accepted before the first full reconcile; it is checked against the
	// maps, and saved as the last good set, then (checkFirstSet).
	setSources   []policies.Source
	setUnwritten bool
	revision     uint64
	policyErr    *api.PolicyError
	model        *policies.Model
	modelKey     string
	hostAddrs    []netip.Prefix
	synced       bool // every source listed once: pruning is safe
	reconciled   bool
	lastSync     time.Time
	problems     map[string]string // current datapath problems by key
	// runtimeReconnects are the reconnects of each source (by name) that
	// membrane_runtime_reconnects_total counts.
	runtimeReconnects map[string]int
	lastStatus        string
	peersDirty        bool // deferred peer policies to write (see recompile)
	// policyFailed: the last policy write failed (see policyWritten).
	policyFailed bool
	lastGood     *lastGoodStore
	// ipcache mirrors what the ipcache map holds after our last write; nil
	// when unknown (start, or after a failed write).
	ipcache map[netip.Prefix]policies.Identity
	// oldPrograms are the veths still on the previous daemon's programs
	// and maps, when Open replaced the maps (bpf.Datapath.Replaced): they
	// keep them until the first full reconcile has filled the new maps,
	// where each veth gets the new programs after its endpoint entry.
	oldPrograms map[int]bool

	view viewHolder
}

type epState struct {
	ep endpoint.Endpoint
	id uint32
	// identity is the endpoint's allocated identity, IdentityHost for
	// the host's namespace, or IdentityInit while none could be
	// allocated for it (its labels are retried at every full resync).
	identity policies.Identity
	labels   policies.Labels // identity-relevant, those of identity
	// held: its veths have no endpoint entry although it has an
	// identity: that identity's policy is not in the maps (writeEndpoint).
	held bool
	// unwritten: none of its veths got its endpoint entry (the endpoints
	// map is full), so it is judged as init on all of them (writeEndpoint).
	unwritten bool
	audit     bool
	ifaces    []int // host ifindexes written to the endpoints map
	enforced  time.Time
}

type request struct {
	fn   func(ctx context.Context) error
	done chan error
}

func newReconciler(cfg *config.Config, log *slog.Logger, dp *bpf.Datapath, ids *identity.Store, filter endpoint.LabelFilter, auditSel *policies.Selector, proxyPort func(uint32) uint16) *reconciler {
	if proxyPort == nil {
		// The L7 proxy is a later phase: connections that need it are
		// plainly allowed until it is wired here.
		proxyPort = func(uint32) uint16 { return 0 }
	}
	r := &reconciler{
		cfg: cfg, log: log, dp: dp, ids: ids, filter: filter, auditSel: auditSel, proxyPort: proxyPort,
		flows:     api.NewFlowHub(4096),
		startedAt: time.Now(),
		reqs:      make(chan request, 64),
		eps:       map[string]*epState{},
		veths:     map[int]linkwatch.Event{},
		nextEpID:  1,
		problems:  map[string]string{},

		runtimeReconnects: map[string]int{},
	}
	r.restoreIDs()
	if dp.Replaced() {
		if att, err := dp.Attached(); err == nil {
			r.oldPrograms = map[int]bool{}
			for _, a := range att {
				r.oldPrograms[a.Ifindex] = true
			}
		}
	}
	r.publish()
	return r
}

// hostIDsFile, in the state directory, keeps the endpoint ids of
// host-network endpoints, which have no entry in the endpoints map, by
// runtime endpoint id.
const hostIDsFile = "host-endpoint-ids.json"

// restoreIDs reads the endpoint ids the previous daemon wrote to the pinned
// endpoints map (or to the one Open replaced) and to hostIDsFile, so that
// endpoints keep their ids across a restart, and starts fresh ids past
// every one of them.
func (r *reconciler) restoreIDs() {
	r.restoredIDs = map[int]uint32{}
	r.restoredHost = map[string]uint32{}
	r.restoredTaken = map[uint32]bool{}
	bump := func(id uint32) {
		if id >= r.nextEpID && id < math.MaxUint32 {
			r.nextEpID = id + 1
		}
	}
	if r.dp != nil {
		ids := r.dp.PreviousEndpointIDs()
		if !r.dp.Replaced() {
			eps, err := r.dp.Endpoints()
			if err != nil {
				r.log.Warn("reading the pinned endpoints map; endpoints get new ids", "err", err)
			}
			ids = map[int]uint32{}
			for ifx, e := range eps {
				ids[ifx] = e.ID
			}
		}
		for ifx, id := range ids {
			if id != 0 {
				r.restoredIDs[ifx] = id
				bump(id)
			}
		}
	}
	if r.cfg.StateDir != "" {
		b, err := os.ReadFile(path.Join(r.cfg.StateDir, hostIDsFile))
		if err == nil {
			err = json.Unmarshal(b, &r.restoredHost)
		}
		if err != nil && !os.IsNotExist(err) {
			r.log.Warn("reading the host-network endpoint ids; they get new ids", "err", err)
		}
		for key, id := range r.restoredHost {
			if id == 0 {
				delete(r.restoredHost, key)
				continue
			}
			bump(id)
		}
	}
	if len(r.restoredIDs)+len(r.restoredHost) > 0 {
		r.log.Debug("endpoint ids restored", "veths", len(r.restoredIDs), "host_network", len(r.restoredHost), "next_id", r.nextEpID)
	}
}

// newEpID is the id of an endpoint seen for the first time: the id its
// veth had in the pinned endpoints map when the daemon started (for a
// host-network endpoint: the one hostIDsFile held), unless another
// endpoint already took that id back, else the next fresh one.
func (r *reconciler) newEpID(ep endpoint.Endpoint) uint32 {
	take := func(id uint32, ok bool) bool {
		if ok && !r.restoredTaken[id] {
			r.restoredTaken[id] = true
			return true
		}
		return false
	}
	if ep.NetworkMode == endpoint.ModeHost {
		if id, ok := r.restoredHost[ep.ID]; take(id, ok) {
			return id
		}
	}
	for _, itf := range ep.Interfaces {
		if id, ok := r.restoredIDs[itf.HostIfindex]; take(id, ok) {
			return id
		}
	}
	id := r.nextEpID
	r.nextEpID++
	return id
}

// saveHostIDs writes the ids of the host-network endpoints to hostIDsFile
// (they change rarely: a write per such endpoint added or removed).
func (r *reconciler) saveHostIDs() {
	if r.cfg.StateDir == "" {
		return
	}
	ids := map[string]uint32{}
	for key, st := range r.eps {
		if st.ep.NetworkMode == endpoint.ModeHost {
			ids[key] = st.id
		}
	}
	// Before the first full reconcile, those not found again yet stay.
	for key, id := range r.restoredHost {
		if _, ok := ids[key]; !ok && !r.restoredTaken[id] {
			ids[key] = id
		}
	}
	b, err := json.Marshal(ids)
	if err == nil {
		err = identity.WriteFileAtomic(path.Join(r.cfg.StateDir, hostIDsFile), append(b, '\n'), 0o600)
	}
	if err != nil {
		err = fmt.Errorf("writing the host-network endpoint ids: %w", err)
	}
	r.problem("host-endpoint-ids", "save-endpoint-ids", err)
}

// do runs fn on the reconciler's goroutine and waits for it.
func (r *reconciler) do(ctx context.Context, fn func(ctx context.Context) error) error {
	req := request{fn: fn, done: make(chan error, 1)}
	select {
	case r.reqs <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// send queues fn without waiting (watchers).
func (r *reconciler) send(ctx context.Context, fn func(ctx context.Context) error) {
	select {
	case r.reqs <- request{fn: fn}:
	case <-ctx.Done():
	}
}

func (r *reconciler) requestPolicyReload(ctx context.Context, since time.Time) {
	r.send(ctx, func(context.Context) error {
		r.loadPolicies(since)
		return nil
	})
}

func (r *reconciler) requestHostAddrs(ctx context.Context, addrs []netip.Prefix) {
	r.send(ctx, func(context.Context) error {
		r.hostAddrs = addrs
		if r.synced {
			r.syncIPCache()
		}
		r.publish()
		return nil
	})
}

// run is the reconcile loop.
func (r *reconciler) run(ctx context.Context) error {
	// The policy set first: the first reconcile must enforce it. It is
	// read once the directory's watch is in place, so that a file written
	// between the two is not missed until the next change.
	if r.policyWatching != nil {
		select {
		case <-r.policyWatching:
		case <-ctx.Done():
			return nil
		}
	}
	r.loadPolicies(time.Now())

	allSynced := make(chan struct{})
	go func() {
		for _, s := range r.sources {
			select {
			case <-s.src.Synced():
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-r.links.Ready():
		case <-ctx.Done():
			return
		}
		close(allSynced)
	}()
	wait := syncWait
	if r.syncWait > 0 {
		wait = r.syncWait
	}
	syncTimer := time.NewTimer(wait)
	defer syncTimer.Stop()

	resync := time.NewTicker(r.cfg.ResyncInterval)
	defer resync.Stop()
	var watchdog <-chan time.Time
	if iv := r.notifier.WatchdogInterval(); iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		watchdog = t.C
	}
	for _, s := range r.sources {
		go r.watchConnection(ctx, s)
	}
	srcEvents := make(chan endpoint.Event)
	for _, s := range r.sources {
		go func() {
			if r.holdEndpointEvents != nil {
				select {
				case <-r.holdEndpointEvents:
				case <-ctx.Done():
					return
				}
			}
			for ev := range s.src.Events() {
				select {
				case srcEvents <- ev:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	linkEvents := r.links.Events()
	// peerSync writes the deferred peer policies once events pause.
	peerSync := time.NewTimer(time.Hour)
	peerSync.Stop()
	armed := false
	// waiting: the sources and the link watcher have listed; the first
	// full reconcile waits for the pending endpoints and veths of their
	// lists (listedNotApplied) to be applied.
	waiting := false
	var pendingEps map[string]bool
	var pendingVeths map[int]bool

	for {
		if r.peersDirty && !armed {
			peerSync.Reset(20 * time.Millisecond)
			armed = true
		}
		select {
		case <-peerSync.C:
			armed = false
			if r.peersDirty {
				start := time.Now()
				r.recompile(true)
				r.metrics.ReconcileDuration.WithLabelValues("peers").Observe(time.Since(start).Seconds())
			}
		case <-ctx.Done():
			return nil
		case <-allSynced:
			allSynced = nil
			// Synced means listed, not applied: the list's events may
			// still be queued for this loop. The first full reconcile
			// (which prunes what it does not know) and READY=1 wait
			// until every endpoint and veth listed by then is applied.
			pendingEps, pendingVeths = r.listedNotApplied()
			waiting = true
		case ev := <-srcEvents:
			start := time.Now()
			r.applyEndpointEvent(ev)
			r.observe("endpoint", start, ev.Time)
			delete(pendingEps, ev.Endpoint.ID)
		case ev, ok := <-linkEvents:
			if !ok {
				linkEvents = nil
				continue
			}
			start := time.Now()
			r.applyLinkEvent(ev)
			r.observe("link", start, ev.Time)
			delete(pendingVeths, ev.Ifindex)
		case <-syncTimer.C:
			if !r.reconciled {
				msg, problem := r.notSynced(waiting, pendingEps, pendingVeths)
				r.log.Warn(msg + "; keeping the pinned datapath as it is until then")
				r.problems["sources"] = problem
				r.fullSync("initial-partial")
				r.markReady()
			}
		case req := <-r.reqs:
			err := req.fn(ctx)
			if req.done != nil {
				req.done <- err
			}
		case <-resync.C:
			r.fullSync("periodic")
		case <-watchdog:
			r.notifier.Watchdog()
		}
		if p, ok := r.problems["sources"]; ok && !r.synced {
			// Past syncWait: status says what is still awaited, as it
			// changes (listed, then applied one by one).
			if _, now := r.notSynced(waiting, pendingEps, pendingVeths); now != p {
				r.problems["sources"] = now
				r.publish()
			}
		}
		if waiting && len(pendingEps) == 0 && len(pendingVeths) == 0 {
			waiting = false
			r.synced = true
			// Endpoints not found again by now are gone: their ids stay
			// unused (nextEpID is past them) and their entries are pruned.
			hadHost := len(r.restoredHost) > 0
			r.restoredIDs, r.restoredHost, r.restoredTaken = nil, nil, nil
			if hadHost {
				r.saveHostIDs() // without the endpoints that are gone
			}
			r.checkFirstSet()
			r.fullSync("initial")
			r.markReady()
		}
	}
}

// watchConnection hands each change of s's connection to its runtime to
// the loop (runtimeConnection).
func (r *reconciler) watchConnection(ctx context.Context, s namedSource) {
	p := s.src.Progress()
	for {
		changed := p.Changed()
		c := p.Connection()
		r.send(ctx, func(context.Context) error {
			r.runtimeConnection(s.name, c)
			return nil
		})
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// runtimePeer names a source's runtime as its operators know the daemon.
func runtimePeer(name string) string {
	if name == "docker" {
		return "dockerd"
	}
	return name
}

// runtimeConnection shows a runtime's connection in status and metrics: a
// runtime lost after it was followed is a problem until it is back (before
// its first list, the "sources" problem says what is awaited), and each
// resync after the first is a reconnect.
func (r *reconciler) runtimeConnection(name string, c endpoint.Connection) {
	key := "runtime/" + name
	up := 0.0
	if c.Up {
		up = 1
	}
	r.metrics.RuntimeConnected.WithLabelValues(name).Set(up)
	if n := max(c.Resyncs-1, 0); n > r.runtimeReconnects[name] {
		r.metrics.RuntimeReconnects.WithLabelValues(name).Add(float64(n - r.runtimeReconnects[name]))
		r.runtimeReconnects[name] = n
	}
	switch {
	case c.Up:
		if _, was := r.problems[key]; was {
			r.log.Info("caught up with "+runtimePeer(name)+" again", "runtime", name, "reconnects", c.Resyncs-1)
		}
		delete(r.problems, key)
	case c.Resyncs > 0:
		r.problems[key] = fmt.Sprintf("lost %s at %s (%s); reconnecting: the endpoints stay enforced as last known, and what changed meanwhile is caught up with when it is back",
			runtimePeer(name), c.Since.UTC().Format(time.RFC3339), c.Err)
	}
	r.publish()
}

// notSynced says, for the log and for status, what the first full
// reconcile is still waiting for when syncWait has passed: the sources
// (or the link watcher) that have not listed, or, once all have
// (waiting), how much of their lists is not applied yet (pendingEps,
// pendingVeths). The loop may see the timer before the close of
// allSynced that came first: then everything has listed, and what is not
// applied is counted here.
func (r *reconciler) notSynced(waiting bool, pendingEps map[string]bool, pendingVeths map[int]bool) (logMsg, problem string) {
	if !waiting {
		var missing []string
		for _, s := range r.sources {
			select {
			case <-s.src.Synced():
			default:
				missing = append(missing, s.name)
			}
		}
		var parts []string
		hint := ""
		switch len(missing) {
		case 0:
		case 1:
			parts = append(parts, "runtime source "+missing[0]+" has not listed its containers")
		default:
			parts = append(parts, "runtime sources "+strings.Join(missing, ", ")+" have not listed their containers")
		}
		switch {
		case slices.Contains(missing, "docker"):
			hint = " (is dockerd running?)"
		case slices.Contains(missing, "containerd"):
			hint = " (is containerd running?)"
		}
		select {
		case <-r.links.Ready():
		default:
			parts = append(parts, "the link watcher has not listed the veths")
		}
		if len(parts) > 0 {
			what := strings.Join(parts, "; ")
			return what + " yet", "not synced yet: " + what + hint
		}
		pendingEps, pendingVeths = r.listedNotApplied()
	}
	var parts []string
	for _, c := range []struct {
		n    int
		what string
	}{{len(pendingEps), "endpoint"}, {len(pendingVeths), "veth"}} {
		switch {
		case c.n == 1:
			parts = append(parts, "1 "+c.what)
		case c.n > 1:
			parts = append(parts, fmt.Sprintf("%d %ss", c.n, c.what))
		}
	}
	if len(parts) == 0 {
		parts = []string{"0 endpoints"} // applied as the timer fired
	}
	what := "the runtime sources and the link watcher have listed, but " + strings.Join(parts, " and ") + " of their lists are not applied yet"
	return what, "not synced yet: " + what
}

// listedNotApplied returns the endpoints that the runtime sources and the
// veths that the link watcher have reported (their events are queued, in
// order, behind what this loop applied) and that the loop does not know
// yet.
func (r *reconciler) listedNotApplied() (eps map[string]bool, veths map[int]bool) {
	eps, veths = map[string]bool{}, map[int]bool{}
	for _, s := range r.sources {
		for _, ep := range s.src.Snapshot() {
			if _, ok := r.eps[ep.ID]; !ok {
				eps[ep.ID] = true
			}
		}
	}
	for _, ev := range r.links.Snapshot() {
		if _, ok := r.veths[ev.Ifindex]; !ok {
			veths[ev.Ifindex] = true
		}
	}
	return eps, veths
}

func (r *reconciler) markReady() {
	if r.reconciled {
		return
	}
	r.reconciled = true
	r.publish()
	r.notifier.Ready()
	r.log.Info("first reconcile done", "endpoints", len(r.eps), "identities", r.ids.Len(), "policy_revision", r.revision)
	if r.onReady != nil {
		r.onReady()
	}
}

func (r *reconciler) observe(kind string, start, evTime time.Time) {
	r.metrics.ReconcileDuration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	if !evTime.IsZero() {
		r.metrics.EventLag.WithLabelValues(kind).Observe(time.Since(evTime).Seconds())
	}
}

// problem records (err != nil) or clears a datapath problem under key.
func (r *reconciler) problem(key, op string, err error) {
	if err == nil {
		delete(r.problems, key)
		return
	}
	r.problems[key] = err.Error()
	r.metrics.DatapathErrors.WithLabelValues(op).Inc()
	lvl := slog.LevelWarn
	if errors.Is(err, bpf.ErrMapFull) {
		lvl = slog.LevelError
	}
	r.log.Log(context.Background(), lvl, "datapath write failed", "op", op, "key", key, "err", err)
}

// ---- policies

func (r *reconciler) loadPolicies(since time.Time) {
	start := time.Now()
	if fi, err := os.Stat(r.cfg.PolicyDir); err == nil && !fi.IsDir() {
		// Load would read the file as a set of one, but the directory
		// watch would never see it change: every later edit, broken or
		// not, would go unseen.
		r.rejectPolicies([]api.Diagnostic{{
			File: r.cfg.PolicyDir, Severity: policies.SeverityError,
			Summary: "Cannot read policy directory: policy_dir is a file, not a directory",
			Detail:  "Policies live in *.hcl files in a directory: move this file into one and point policy_dir (in " + r.cfgPathOrDefault() + ") at it.",
		}})
		return
	}
	files, _ := policies.ListDir(r.cfg.PolicyDir)
	set, rep := policies.Load(r.cfg.PolicyDir)
	if rep.HasErrors() || set == nil {
		var diags []api.Diagnostic
		for _, d := range rep.Diagnostics {
			diags = append(diags, api.Diagnostic{
				File: d.Pos.File, Line: d.Pos.Line, Column: d.Pos.Column,
				Severity: d.Severity, Summary: d.Summary, Detail: d.Detail,
			})
		}
		r.rejectPolicies(diags)
		return
	}
	for _, d := range rep.Warnings() {
		r.log.Warn("policy warning", "pos", d.Pos.String(), "summary", d.Summary)
	}
	// A valid set can still be one the datapath cannot hold (an identity
	// selected by more rules than a policy map has room for). Before the
	// first full reconcile the loop cannot know (it writes nothing): the
	// set is checked then (checkFirstSet).
	if r.synced && !r.enforce(set) {
		return
	}
	r.policyErr = nil
	r.metrics.PolicyLoadFailing.Set(0)
	r.set = set
	r.setFiles = files
	r.setLoaded = time.Now()
	r.metrics.Policies.Set(float64(len(set.Policies)))
	r.setUnwritten = !r.synced
	r.setSources = rep.Sources
	if r.synced {
		r.accepted("policy set loaded")
		r.saveLastGood()
	} else {
		// Not accepted yet: it takes a revision once checkFirstSet finds
		// that it fits.
		r.log.Info("policy set read; it is checked against the maps at the first full reconcile", "dir", r.cfg.PolicyDir, "policies", len(set.Policies))
	}
	r.publish()
	r.metrics.ReconcileDuration.WithLabelValues("policy").Observe(time.Since(start).Seconds())
	r.metrics.EventLag.WithLabelValues("policy").Observe(time.Since(since).Seconds())
}

// accepted counts r.set, just put in force, as a new policy revision: the
// revision counts the sets that were accepted (status, metrics, flows),
// not the sets read.
func (r *reconciler) accepted(msg string) {
	r.revision++
	r.metrics.PolicyRevision.Set(float64(r.revision))
	r.metrics.Policies.Set(float64(len(r.set.Policies)))
	r.log.Info(msg, "dir", r.cfg.PolicyDir, "policies", len(r.set.Policies), "revision", r.revision)
}

// enforce writes set, a valid set, to the datapath (the loop is synced)
// and reports whether set is to be accepted. A set that does not fit the
// maps is rejected like an invalid one (false) when what was in force
// before it still fits and is written back: the set this daemon enforced,
// or, when it has written none yet (at start), the last good set saved in
// the state directory, or with none saved, nothing: the pinned policy
// maps stay as the previous daemon left them, as for an invalid set at
// start. Only when the set in force (or the last good one) does not fit
// either is set kept anyway (too many endpoints, say): it is what the
// user wants.
func (r *reconciler) enforce(set *policies.Set) bool {
	prev := r.set
	r.set = set
	err := r.recompile(true)
	if err == nil {
		err = r.syncIPCache()
	}
	if !errors.Is(err, bpf.ErrMapFull) {
		return true
	}
	diags := r.capacityDiagnostics(set, err)
	r.set = prev
	switch {
	case prev != nil:
		if r.recompile(true) == nil && r.syncIPCache() == nil {
			r.rejectPolicies(diags)
			return false
		}
	case r.model == nil:
		// This daemon has written no policy: SyncPolicy checks the whole
		// model before it writes, so the maps are the previous daemon's.
		r.policyFailed = false
		r.problem("policy", "sync-policy", nil)
		if err := r.reject(diags, true); !errors.Is(err, bpf.ErrMapFull) {
			return false
		}
		// The last good set does not fit either: nothing was rejected.
	}
	r.set = set
	r.recompile(true)
	r.syncIPCache()
	return true
}

// checkFirstSet runs at the first full reconcile: a set read before it
// (the loop could not write yet) is checked against the maps now, as
// loadPolicies checks every set after it, and only then accepted (a
// revision) and saved as the last good set.
func (r *reconciler) checkFirstSet() {
	if !r.setUnwritten {
		return
	}
	r.setUnwritten = false
	set := r.set
	r.set = nil
	if r.enforce(set) {
		r.set = set
		r.accepted("policy set loaded")
		r.saveLastGood()
		return
	}
	if r.set == nil {
		// Rejected, and no last good set in its place.
		r.setFiles = nil
		r.metrics.Policies.Set(0)
	}
	r.publish()
}

// saveLastGood saves the sources of the set in force as the last good set.
func (r *reconciler) saveLastGood() {
	if r.lastGood != nil {
		r.lastGood.save(r.setSources, func(err error) { r.log.Warn("saving the last good policy set", "err", err) })
	}
}

func (r *reconciler) cfgPathOrDefault() string {
	if r.cfg.Path == "" {
		return config.DefaultPath
	}
	return r.cfg.Path
}

// rejectPolicies records a rejected policy set (diags are its problems)
// and keeps the last good set enforced. When this daemon has no set, it
// adopts the one saved in the state directory; the error is that of
// writing it (adoptLastGood).
func (r *reconciler) rejectPolicies(diags []api.Diagnostic) error {
	return r.reject(diags, false)
}

// reject is rejectPolicies. tooBig: the set is valid but does not fit the
// maps, and the caller keeps it when the last good set does not fit
// either; then nothing is rejected (nor counted, nor logged as such) and
// the error is adoptLastGood's ErrMapFull.
func (r *reconciler) reject(diags []api.Diagnostic, tooBig bool) error {
	pe := &api.PolicyError{Time: time.Now(), Message: "policy set rejected; the last good set stays enforced", Diagnostics: diags}
	if len(diags) == 0 {
		pe.Message = "policy directory " + r.cfg.PolicyDir + " could not be loaded"
	}
	prevErr := r.policyErr
	r.policyErr = pe
	var err error
	if r.set == nil {
		err = r.adoptLastGood(tooBig)
	}
	if tooBig && errors.Is(err, bpf.ErrMapFull) {
		r.policyErr = prevErr
		return err
	}
	kept := "the last good set stays enforced"
	if r.set == nil {
		// Nothing accepted by this daemon, and nothing saved to fall
		// back to: no set is loaded (operations.md, "Configuration").
		kept = "no policy set is loaded (none was accepted or saved before); the policy maps pinned before stay as they are"
		if len(diags) > 0 {
			pe.Message = "policy set rejected; " + kept
		}
	}
	nerr := 0
	for _, d := range diags {
		if d.Severity == policies.SeverityError {
			nerr++
			pos := d.File
			if d.Line > 0 {
				pos = fmt.Sprintf("%s:%d:%d", d.File, d.Line, d.Column)
			}
			r.log.Error("invalid policy", "pos", pos, "summary", d.Summary, "detail", d.Detail)
		}
	}
	r.metrics.PolicyLoadErrors.Inc()
	r.metrics.PolicyLoadFailing.Set(1)
	r.log.Error("policy set rejected; "+kept, "dir", r.cfg.PolicyDir, "errors", nerr, "revision", r.revision)
	r.publish()
	return err
}

// capacityDiagnostics explains why set does not fit the datapath (err,
// from recompile or syncIPCache): at every policy that selects the
// identity whose policy map would overflow, or, for the ipcache, at the
// policy directory.
func (r *reconciler) capacityDiagnostics(set *policies.Set, err error) []api.Diagnostic {
	var ce *bpf.PolicyCapacityError
	if errors.As(err, &ce) {
		var labels policies.Labels
		for _, st := range r.eps {
			if st.identity == ce.Identity {
				labels = st.labels
				break
			}
		}
		var diags []api.Diagnostic
		for _, p := range set.Policies {
			if !p.Selector.Matches(labels) {
				continue
			}
			diags = append(diags, api.Diagnostic{
				File: p.Pos.File, Line: p.Pos.Line, Column: p.Pos.Column, Severity: policies.SeverityError,
				Summary: fmt.Sprintf("Policy %q cannot be enforced: identity %d (%s) would need %d policy entries; maps.policy_entries is %d",
					p.Name, ce.Identity, labelString(labels), ce.Need, ce.Max),
				Detail: "The rules of the policies that select this identity add up to more policy map entries than one identity's map holds. " +
					"Use port ranges instead of long lists of single ports, or fewer peers, or raise maps { policy_entries = N } in membrane.hcl.",
			})
		}
		if len(diags) > 0 {
			return diags
		}
	}
	return []api.Diagnostic{{
		File: r.cfg.PolicyDir, Severity: policies.SeverityError,
		Summary: "Policy set cannot be enforced: " + err.Error(),
		Detail:  "The set is valid but does not fit the datapath's maps; make it smaller or raise the map sizes (maps { ... }) in membrane.hcl.",
	}}
}

func labelString(l policies.Labels) string {
	keys := slices.Sorted(maps.Keys(l))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+l[k])
	}
	if len(parts) == 0 {
		return "no labels"
	}
	return strings.Join(parts, ",")
}

// adoptLastGood enforces the set saved by an earlier run when this daemon
// has none of its own (it started while the directory was invalid). The
// error is that of writing it to the datapath (synced loop only). With
// orNew, a set that does not fit the maps (ErrMapFull) is not accepted
// (no revision): the caller puts the new set in its place.
func (r *reconciler) adoptLastGood(orNew bool) error {
	if r.lastGood == nil {
		return nil
	}
	set, files, saved, err := r.lastGood.load()
	if err != nil {
		r.log.Warn("cannot use the last good policy set", "err", err)
		return nil
	}
	if set == nil {
		r.log.Warn("no last good policy set saved; the pinned policy maps stay as they are")
		return nil
	}
	r.set = set
	if r.synced {
		err = r.recompile(true)
		if err == nil {
			err = r.syncIPCache()
		}
	}
	if orNew && errors.Is(err, bpf.ErrMapFull) {
		// The caller's set takes its place, with its own files and
		// sources (to save).
		r.log.Warn("the last good policy set saved before does not fit the maps either", "saved", saved, "policies", len(set.Policies))
		return err
	}
	r.setFiles = files
	r.setLoaded = saved
	r.setUnwritten = false
	r.setSources = nil // it is saved already
	r.log.Warn("enforcing the last good policy set saved before", "saved", saved, "policies", len(set.Policies))
	r.accepted("last good policy set loaded")
	if r.policyErr != nil {
		r.policyErr.Message = fmt.Sprintf("policy set rejected; enforcing the last good set (saved %s)", saved.Format(time.RFC3339))
	}
	return err
}

// localIdentities returns the allocated identities of the current
// endpoints with their labels, sorted.
func (r *reconciler) localIdentities() []policies.IdentityLabels {
	seen := map[policies.Identity]bool{}
	var out []policies.IdentityLabels
	for _, st := range r.eps {
		if st.identity < policies.FirstAllocated || seen[st.identity] {
			continue
		}
		seen[st.identity] = true
		out = append(out, policies.IdentityLabels{Identity: st.identity, Labels: st.labels})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	return out
}

// recompile compiles the model for the current identities and writes the
// difference to the policy maps. force recompiles even when the identity
// set is unchanged (the policy set changed).
//
// When new identities appear (a container starts) every identity whose
// policy names them changes too, and swapping all those maps is what
// costs time. So the write is split in two, fail-closed: first every
// identity whose change is anything but "allow entries added for the new
// identities" (the new identities themselves, and every identity gaining
// a deny, losing an entry or changing flags); the endpoint is enforced
// right after that. The deferred identities only lack allow entries, so
// meanwhile they are stricter than the target, never looser. Their maps
// follow in a batch when the event queue is quiet (peerSync).
func (r *reconciler) recompile(force bool) error {
	if !r.synced {
		// Without the full endpoint list a model would lack identities and
		// SyncPolicy would remove their policies: keep the pinned ones.
		return nil
	}
	locals := r.localIdentities()
	var kb strings.Builder
	for _, il := range locals {
		kb.WriteString(strconv.FormatUint(uint64(il.Identity), 10))
		kb.WriteByte(',')
	}
	key := kb.String()
	if !force && key == r.modelKey && r.model != nil {
		return nil
	}
	if r.set == nil {
		// No valid set was ever loaded by this daemon: the pinned policy
		// maps (the previous daemon's last good set) stay as they are.
		return nil
	}
	m, err := policies.Compile(r.set, locals, policies.CompileOptions{
		Enforcement: r.cfg.Enforcement, Audit: r.cfg.Audit, AuditSelector: r.auditSel,
	})
	if err != nil {
		r.problem("compile", "compile", err)
		r.policyFailed = true
		return err
	}
	r.problem("compile", "compile", nil)
	write, deferred := m, 0
	if !force && r.model != nil {
		write, deferred = deferPeers(r.model, m)
	}
	stats, err := r.dp.SyncPolicy(write, r.proxyPort)
	r.problem("policy", "sync-policy", err)
	r.policyFailed = err != nil
	if err != nil {
		return err
	}
	r.model = write
	r.updateL7()
	// Endpoints held back while their identity's policy was missing
	// (writeEndpoint) are enforced now that it is written.
	for _, st := range r.eps {
		if _, held := r.problems["held/"+st.ep.ID]; held && r.policyWritten(st.identity) {
			r.writeEndpoint(st)
		}
	}
	if deferred > 0 {
		r.modelKey = "" // the next recompile writes the whole model
		r.peersDirty = true
	} else {
		r.modelKey = key
		r.peersDirty = false
	}
	r.log.Debug("policy maps synced", "identities", len(locals), "deferred", deferred, "stats", fmt.Sprintf("%+v", stats))
	return nil
}

// deferPeers returns the model to write first (see recompile) and how many
// identities keep their current policy for now.
func deferPeers(cur, next *policies.Model) (*policies.Model, int) {
	old := map[policies.Identity]*policies.IdentityPolicy{}
	for i := range cur.Identities {
		old[cur.Identities[i].Identity] = &cur.Identities[i]
	}
	added := map[policies.Identity]bool{}
	for _, ip := range next.Identities {
		if old[ip.Identity] == nil {
			added[ip.Identity] = true
		}
	}
	if len(added) == 0 {
		return next, 0
	}
	out := &policies.Model{CIDRs: next.CIDRs, L7: next.L7, Identities: make([]policies.IdentityPolicy, len(next.Identities))}
	n := 0
	for i, ip := range next.Identities {
		out.Identities[i] = ip
		if o := old[ip.Identity]; o != nil && len(o.Entries) != len(ip.Entries) && onlyAllowsAdded(o, &ip, added) {
			out.Identities[i] = *o
			n++
		}
	}
	return out, n
}

// onlyAllowsAdded reports whether next differs from cur only by plain
// allow entries whose remote is one of the added identities.
func onlyAllowsAdded(cur, next *policies.IdentityPolicy, added map[policies.Identity]bool) bool {
	if cur.IngressDefaultDeny != next.IngressDefaultDeny || cur.EgressDefaultDeny != next.EgressDefaultDeny || cur.Audit || next.Audit {
		return false
	}
	have := make(map[policies.Entry]bool, len(cur.Entries))
	for _, e := range cur.Entries {
		if e.L7 != 0 {
			return false
		}
		have[e] = true
	}
	matched := 0
	for _, e := range next.Entries {
		if have[e] {
			matched++
			continue
		}
		if e.Action != policies.Allow || e.L7 != 0 || e.Audit || !added[e.Remote] {
			return false
		}
	}
	return matched == len(have)
}

// ---- endpoints

// endpointFlags are the datapath flags of an endpoint. It enforces both
// directions whatever the enforcement: with "never" its policy is empty
// (decision 31), so every connection is allowed, and the datapath tracks
// it, which an endpoint without the enforce flags would not. When
// enforcement comes on, a connection opened meanwhile is then judged
// again as the connection it is, and its replies are not taken for new
// flows the other way (decision 75).
func (r *reconciler) endpointFlags(st *epState) bpf.EndpointFlags {
	f := bpf.EnforceIngress | bpf.EnforceEgress
	if st.audit {
		f |= bpf.Audit
	}
	return f
}

func (r *reconciler) applyEndpointEvent(ev endpoint.Event) {
	start := time.Now()
	switch ev.Type {
	case endpoint.Removed:
		st, ok := r.eps[ev.Endpoint.ID]
		if !ok {
			return
		}
		delete(r.eps, ev.Endpoint.ID)
		if st.ep.NetworkMode == endpoint.ModeHost {
			r.saveHostIDs()
		}
		delete(r.problems, "held/"+ev.Endpoint.ID)
		delete(r.problems, "identity/"+ev.Endpoint.ID)
		if r.synced {
			for _, ifx := range st.ifaces {
				// The veth keeps its programs while it exists (fail-closed);
				// without an endpoint entry it is judged as init.
				r.problem(fmt.Sprintf("endpoint/%d", ifx), "delete-endpoint", r.dp.DeleteEndpoint(ifx))
			}
			// Room in the endpoints map: an endpoint that had none gets its
			// entries now rather than at the next full resync.
			for _, o := range r.eps {
				if o.unwritten {
					r.writeEndpoint(o)
				}
			}
			r.syncIPCache()
			r.updateIdentityUse()
			r.recompile(false)
		}
		r.log.Info("endpoint removed", "endpoint", ev.Endpoint.ID, "containers", containerNames(ev.Endpoint))
	default:
		st := r.eps[ev.Endpoint.ID]
		if st == nil {
			st = &epState{id: r.newEpID(ev.Endpoint)}
			r.eps[ev.Endpoint.ID] = st
		}
		wasHost := st.ep.NetworkMode == endpoint.ModeHost
		st.ep = ev.Endpoint.Clone()
		if (st.ep.NetworkMode == endpoint.ModeHost) != wasHost {
			r.saveHostIDs()
		}
		if st.ep.NetworkMode == endpoint.ModeHost {
			// Processes in the host namespace are the host entity.
			st.identity = policies.IdentityHost
			st.labels = nil
			delete(r.problems, "identity/"+ev.Endpoint.ID)
		} else {
			r.allocate(st)
		}
		st.audit = r.cfg.Audit || (r.auditSel != nil && r.auditSel.Matches(st.labels))
		tAlloc := time.Now()
		var tIPC, tPol time.Time
		if r.synced {
			r.updateIdentityUse()
			// Order matters for the first packet: the ipcache and the
			// policy of the new identity first, then the endpoint entry
			// that makes the datapath judge the veth under that identity.
			r.syncIPCache()
			tIPC = time.Now()
			r.recompile(false)
			tPol = time.Now()
			r.writeEndpoint(st)
		}
		r.log.Debug("endpoint timing", "alloc_ms", float64(tAlloc.Sub(start).Microseconds())/1000, "ipcache_ms", float64(tIPC.Sub(tAlloc).Microseconds())/1000, "policy_ms", float64(tPol.Sub(tIPC).Microseconds())/1000, "write_ms", sinceMillis(tPol))
		r.log.Info("endpoint "+string(ev.Type), "endpoint", ev.Endpoint.ID, "containers", containerNames(ev.Endpoint), "identity", st.identity, "ifaces", st.ifaces,
			"took_ms", sinceMillis(start), "event_lag_ms", float64(start.Sub(ev.Time).Microseconds())/1000)
	}
	r.publish()
}

// writeEndpoint puts st's interfaces into the endpoints map and attaches
// the programs (idempotent), and removes interfaces it no longer has.
func (r *reconciler) writeEndpoint(st *epState) {
	if st.ep.NetworkMode == endpoint.ModeHost {
		return
	}
	var now []int
	for _, itf := range st.ep.Interfaces {
		if itf.HostIfindex > 0 && r.managed(itf) {
			now = append(now, itf.HostIfindex)
		}
	}
	heldKey := "held/" + st.ep.ID
	if st.identity == policies.IdentityInit || !r.policyWritten(st.identity) {
		wasHeld := st.held
		st.held = true
		// Fail closed: an endpoint entry would have the datapath judge
		// the veth under an identity whose policy is not in the maps, that
		// is with no rule at all (everything allowed). Until its policy is
		// written, the veth keeps its programs and no entry: identity
		// init, dropped by default (unknown_endpoint).
		for _, ifx := range now {
			r.attachBridge(r.bridgeOf(ifx))
			r.problem(fmt.Sprintf("attach/%d", ifx), "attach", r.dp.Attach(ifx))
		}
		for _, old := range st.ifaces {
			r.problem(fmt.Sprintf("endpoint/%d", old), "delete-endpoint", r.dp.DeleteEndpoint(old))
		}
		st.ifaces = nil
		if !wasHeld {
			// Its addresses are init's now, as its veths' traffic is.
			r.syncIPCache()
		}
		if st.identity == policies.IdentityInit {
			// The identity problem says why.
			return
		}
		if _, known := r.problems[heldKey]; !known {
			r.problem(heldKey, "hold-endpoint", fmt.Errorf("endpoint %d (%s) is not enforced under identity %d: its policy could not be written to the policy maps (see the policy problem); its traffic is judged as identity init meanwhile",
				st.id, strings.Join(containerNames(st.ep), ","), st.identity))
		}
		return
	}
	delete(r.problems, heldKey)
	if st.held {
		// Its addresses are its identity's again before its veths are:
		// the ipcache first, as for a new endpoint.
		st.held = false
		r.syncIPCache()
	}
	written := 0
	for _, ifx := range now {
		// L7 redirects go to the ingress of the veth's bridge, which gets
		// the bridge program first.
		br := r.bridgeOf(ifx)
		r.attachBridge(br)
		e := bpf.Endpoint{ID: st.id, Identity: st.identity, Flags: r.endpointFlags(st), Bridge: br}
		err := r.dp.SetEndpoint(ifx, e)
		r.problem(fmt.Sprintf("endpoint/%d", ifx), "set-endpoint", err)
		if err == nil {
			written++
		}
		r.problem(fmt.Sprintf("attach/%d", ifx), "attach", r.dp.Attach(ifx))
	}
	for _, old := range st.ifaces {
		if !slices.Contains(now, old) {
			r.problem(fmt.Sprintf("endpoint/%d", old), "delete-endpoint", r.dp.DeleteEndpoint(old))
		}
	}
	st.ifaces = now
	if written > 0 && st.enforced.IsZero() {
		st.enforced = time.Now()
	}
	// With no entry on any of its veths (the endpoints map is full: the
	// problem says so) its traffic is init's, and so are its addresses for
	// its peers (decision 52), until a write succeeds (retried at every
	// full resync).
	if unwritten := len(now) > 0 && written == 0; unwritten != st.unwritten {
		st.unwritten = unwritten
		r.syncIPCache()
	}
}

// policyWritten reports whether the policy maps hold identity id's policy
// as this daemon last wrote it. Before this daemon has written a model
// the pinned maps are the previous daemon's and are trusted as they are,
// except, once a write has failed, for identities they have no policy for.
func (r *reconciler) policyWritten(id policies.Identity) bool {
	if r.model == nil {
		return !r.policyFailed || r.dp.HasPolicy(id)
	}
	_, ok := slices.BinarySearchFunc(r.model.Identities, id, func(ip policies.IdentityPolicy, id policies.Identity) int {
		return cmp.Compare(ip.Identity, id)
	})
	return ok
}

// allocate gives st the identity of its labels. When that fails (the
// identity store cannot be written, every number is taken) the endpoint
// keeps the identity it has, as its labels (a new endpoint: init, so its
// addresses are init's in the ipcache, never world's), the problem is in
// status, and the next full resync tries again. It reports whether the
// identity changed.
func (r *reconciler) allocate(st *epState) bool {
	labels := policies.Labels(endpoint.IdentityLabels(st.ep.Labels, r.filter))
	id, err := r.ids.Allocate(labels)
	if err != nil {
		err = fmt.Errorf("endpoint %s (%s) has no identity for its labels {%s}: %w; it stays under identity %d meanwhile and the allocation is retried at every full resync",
			st.ep.ID, strings.Join(containerNames(st.ep), ","), labelString(labels), err, cmp.Or(st.identity, policies.IdentityInit))
	}
	r.problem("identity/"+st.ep.ID, "allocate-identity", err)
	if err != nil {
		if st.identity == 0 {
			st.identity = policies.IdentityInit
		}
		return false
	}
	changed := id != st.identity
	st.identity, st.labels = id, labels
	return changed
}

// judgedAs is the identity st's traffic is judged as, and so what its
// addresses map to in the ipcache: init while its veths have no endpoint
// entry (no identity yet, its policy not written, or no room in the
// endpoints map), as Cilium's
// reserved:init. Otherwise its peers would see its addresses as world
// (no ipcache entry) or as an identity whose policy does not judge it.
func judgedAs(st *epState) policies.Identity {
	if st.held || st.unwritten {
		return policies.IdentityInit
	}
	return st.identity
}

func (r *reconciler) updateIdentityUse() {
	inUse := map[policies.Identity]bool{}
	for _, st := range r.eps {
		inUse[st.identity] = true
	}
	r.ids.SetInUse(inUse)
	r.metrics.Identities.Set(float64(r.ids.Len()))
	r.metrics.Endpoints.Set(float64(len(r.eps)))
}

// managed reports whether an endpoint interface is on a managed bridge:
// the link watcher reported it, or its bridge matches the patterns.
// Containers on other networks are not enforced.
func (r *reconciler) managed(itf endpoint.Interface) bool {
	if _, ok := r.veths[itf.HostIfindex]; ok {
		return true
	}
	for _, p := range r.bridges {
		if ok, _ := path.Match(p, itf.Bridge); ok && itf.Bridge != "" {
			return true
		}
	}
	return false
}

// ---- links

func (r *reconciler) applyLinkEvent(ev linkwatch.Event) {
	switch ev.Type {
	case linkwatch.Removed:
		delete(r.veths, ev.Ifindex)
		r.problem(fmt.Sprintf("attach/%d", ev.Ifindex), "detach", r.dp.Detach(ev.Ifindex))
		r.problem(fmt.Sprintf("endpoint/%d", ev.Ifindex), "delete-endpoint", r.dp.DeleteEndpoint(ev.Ifindex))
		delete(r.problems, fmt.Sprintf("endpoint/%d", ev.Ifindex))
		delete(r.problems, fmt.Sprintf("attach/%d", ev.Ifindex))
	default:
		_, known := r.veths[ev.Ifindex]
		r.veths[ev.Ifindex] = ev
		r.attachBridge(ev.MasterIndex)
		if !known && !r.oldPrograms[ev.Ifindex] {
			// Fail-closed: the programs go on at once. Until an endpoint
			// entry exists the veth's traffic is identity init.
			r.problem(fmt.Sprintf("attach/%d", ev.Ifindex), "attach", r.dp.Attach(ev.Ifindex))
			r.log.Debug("veth attached", "ifindex", ev.Ifindex, "name", ev.Name, "master", ev.Master)
			// An endpoint that already names this veth (the runtime was
			// faster than the kernel notification) gets its entry now.
			claimed := false
			for _, st := range r.eps {
				if slices.Contains(st.ep.HostIfindexes(), ev.Ifindex) {
					claimed = true
					if r.synced && !slices.Contains(st.ifaces, ev.Ifindex) {
						r.writeEndpoint(st)
					}
				}
			}
			// A veth put into a running container's namespace (a CNI
			// plugin's, Nomad's bridge networking) comes with no runtime
			// event: the source reads the container again now, not at its
			// next recheck.
			if !claimed && ev.Container.ID != "" {
				for _, s := range r.sources {
					if rc, ok := s.src.(interface{ Recheck(id string) }); ok && s.name == string(ev.Runtime) {
						r.log.Debug("veth in a known container's namespace; reading the container again", "ifindex", ev.Ifindex, "container", ev.Container.ID)
						rc.Recheck(ev.Container.ID)
					}
				}
			}
		}
	}
	r.publish()
}

// ---- ipcache

func (r *reconciler) wantIPCache() map[netip.Prefix]policies.Identity {
	want := map[netip.Prefix]policies.Identity{}
	if r.model != nil {
		for _, c := range r.model.CIDRs {
			want[c.Prefix] = c.Identity
		}
	}
	// The host's addresses stay the host's: a CIDR rule never matches
	// the host (decision 26), and an endpoint that holds one (a
	// containerd container with NET_ADMIN can add any address) must not
	// pass for the host, nor the host's connections for it.
	host := map[netip.Prefix]bool{}
	for _, p := range r.hostAddrs {
		a := p.Addr()
		hp := netip.PrefixFrom(a, a.BitLen())
		want[hp] = policies.IdentityHost
		host[hp] = true
	}
	// An address two endpoints hold (a containerd container added
	// another's; a runtime reported a new container before the one whose
	// address it reuses went) stays with the identity the ipcache gives
	// it now, else with the endpoint known first: never one picked anew
	// at every write, which would take it from its owner half the time.
	have := r.ipcache
	if have == nil {
		have, _ = r.dp.IPCache()
	}
	sts := slices.SortedFunc(maps.Values(r.eps), func(a, b *epState) int { return cmp.Compare(a.id, b.id) })
	held := map[netip.Prefix]policies.Identity{}
	for _, st := range sts {
		if st.ep.NetworkMode == endpoint.ModeHost {
			continue
		}
		for _, a := range st.ep.Addrs() {
			p := netip.PrefixFrom(a, a.BitLen())
			if host[p] {
				continue
			}
			id := judgedAs(st)
			if first, ok := held[p]; ok {
				if cur, known := have[p]; !known || cur == first || cur != id {
					continue
				}
			}
			held[p] = id
			want[p] = id
		}
	}
	return want
}

// syncIPCache writes the difference between what the ipcache should hold
// and what this daemon last wrote (reading the LPM trie back costs more
// than the write); full resyncs compare with the kernel instead.
func (r *reconciler) syncIPCache() error {
	want := r.wantIPCache()
	if r.ipcache == nil {
		return r.syncIPCacheFull(want)
	}
	var err error
	for p, id := range want {
		if cur, ok := r.ipcache[p]; ok && cur == id {
			continue
		}
		if err = r.dp.IPCacheSet(p, id); err != nil {
			break
		}
		r.ipcache[p] = id
	}
	if err == nil {
		for p := range r.ipcache {
			if _, ok := want[p]; ok {
				continue
			}
			if err = r.dp.IPCacheDelete(p); err != nil {
				break
			}
			delete(r.ipcache, p)
		}
	}
	if errors.Is(err, bpf.ErrMapFull) {
		// A table with no room for the new entries beside the stale ones
		// (added first, above) may still hold what is wanted: the full
		// sync removes those first when it must, and says by how much
		// the table is too small when it is.
		err = r.syncIPCacheFull(want)
		r.updateL7()
		return err
	}
	if err != nil {
		// Fall back to a full comparison with the kernel next time.
		r.ipcache = nil
	}
	r.problem("ipcache", "ipcache", err)
	r.updateL7()
	return err
}

func (r *reconciler) syncIPCacheFull(want map[netip.Prefix]policies.Identity) error {
	err := r.dp.IPCacheSync(want)
	r.problem("ipcache", "ipcache", err)
	if err != nil {
		r.ipcache = nil
		return err
	}
	r.ipcache = maps.Clone(want)
	return nil
}

// ---- full resync

// fullSync rewrites the whole datapath from the loop's state and prunes
// what is not wanted any more. Every write is idempotent.
func (r *reconciler) fullSync(why string) {
	start := time.Now()
	r.forgetBridges()
	for ifx, ev := range r.veths {
		if !r.oldPrograms[ifx] {
			r.problem(fmt.Sprintf("attach/%d", ifx), "attach", r.dp.Attach(ifx))
		}
		r.attachBridge(ev.MasterIndex)
	}
	if r.synced {
		for _, st := range r.eps {
			if _, failed := r.problems["identity/"+st.ep.ID]; failed && st.ep.NetworkMode != endpoint.ModeHost && r.allocate(st) {
				st.audit = r.cfg.Audit || (r.auditSel != nil && r.auditSel.Matches(st.labels))
				r.log.Info("endpoint has its identity now", "endpoint", st.ep.ID, "containers", containerNames(st.ep), "identity", st.identity)
			}
		}
		r.updateIdentityUse()
		// The policy maps are diffed against their mirror, so a periodic
		// recompile of an unchanged set and identity list would only burn
		// CPU; the first reconcile and an API resync rewrite it all.
		r.recompile(why != "periodic")
		r.syncIPCacheFull(r.wantIPCache())
		want := map[int]bool{}
		for _, st := range r.eps {
			r.writeEndpoint(st)
			for _, ifx := range st.ifaces {
				want[ifx] = true
			}
		}
		// The new maps are full: the veths without an endpoint (init)
		// leave the old programs too.
		for ifx := range r.veths {
			if r.oldPrograms[ifx] {
				r.problem(fmt.Sprintf("attach/%d", ifx), "attach", r.dp.Attach(ifx))
			}
		}
		r.oldPrograms = nil
		if have, err := r.dp.Endpoints(); err == nil {
			for ifx := range have {
				if !want[ifx] {
					r.problem(fmt.Sprintf("endpoint/%d", ifx), "delete-endpoint", r.dp.DeleteEndpoint(ifx))
				}
			}
		}
		if att, err := r.dp.Attached(); err == nil {
			for _, a := range att {
				if _, ok := r.veths[a.Ifindex]; !ok && !want[a.Ifindex] {
					r.problem(fmt.Sprintf("attach/%d", a.Ifindex), "detach", r.dp.Detach(a.Ifindex))
					delete(r.problems, fmt.Sprintf("attach/%d", a.Ifindex))
				}
			}
		}
		if released, err := r.ids.Release(); err != nil {
			r.log.Warn("releasing identities", "err", err)
		} else if len(released) > 0 {
			r.log.Info("identities released after the grace period", "identities", released)
		}
		delete(r.problems, "sources")
	}
	r.pruneBridges()
	if n, err := r.dp.GC(time.Now()); err != nil {
		r.log.Warn("conntrack gc", "err", err)
	} else if n > 0 {
		r.log.Debug("conntrack gc", "expired", n)
	}
	r.lastSync = time.Now()
	r.metrics.ReconcileDuration.WithLabelValues("full").Observe(time.Since(start).Seconds())
	r.log.Debug("full resync", "why", why, "took_ms", sinceMillis(start))
	r.publish()
}
