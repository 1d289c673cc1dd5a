package linkwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/runtime/endpoint"
)

// DefaultBridges are the master names managed by default.
var DefaultBridges = []string{"docker0", "br-*", "cni0", "cni-*", "cbr0", "nerdctl*"}

// DefaultNetnsDirs are where the watcher looks for peer namespace files.
var DefaultNetnsDirs = []string{"/run/docker/netns", "/var/run/docker/netns", "/run/netns"}

// Resolver finds the endpoint that owns a network namespace.
type Resolver interface {
	ContainerByNetns(inode uint64) (endpoint.Endpoint, bool)
}

// Config configures a Watcher.
type Config struct {
	// Bridges are shell patterns (path.Match) on the master's name; nil
	// means DefaultBridges.
	Bridges []string
	// NetnsDirs are scanned for peer namespace files; nil means
	// DefaultNetnsDirs.
	NetnsDirs []string
	// Resolvers name the container behind a veth when they know its netns.
	Resolvers []Resolver
	Logger    *slog.Logger
}

// EventType is what happened to a veth.
type EventType string

const (
	Added   EventType = "added"
	Updated EventType = "updated"
	Removed EventType = "removed"
)

// Event reports one veth on a managed bridge.
type Event struct {
	Type EventType
	// Time is when the watcher read the kernel's notification.
	Time    time.Time
	Ifindex int
	Name    string
	MAC     net.HardwareAddr
	// MasterIndex and Master name the bridge.
	MasterIndex int
	Master      string
	// PeerIfindex is the other end's ifindex (IFLA_LINK), in the peer's
	// namespace; PeerNetnsID is IFLA_LINK_NETNSID as the daemon's namespace
	// numbers it, -1 while the peer is still in the daemon's namespace.
	PeerIfindex int
	PeerNetnsID int
	// PeerNetnsInode is the peer namespace's inode, 0 when unknown.
	PeerNetnsInode uint64
	// Endpoint and Container name the owner when a Resolver knows it
	// (EndpointID "" otherwise). Container is the netns owner.
	EndpointID string
	Runtime    endpoint.Runtime
	Container  endpoint.Container
}

type veth struct {
	ev       Event // as last reported
	reported bool
}

// Watcher follows link notifications. Create with New; call Run once.
type Watcher struct {
	cfg   Config
	log   *slog.Logger
	queue *endpoint.Queue[Event]

	mu     sync.Mutex
	veths  map[int]*veth
	names  map[int]string // ifindex -> name of every link seen (bridges)
	nsfile map[string]nsEntry

	readyOnce sync.Once
	ready     chan struct{}
}

type nsEntry struct {
	inode uint64
	nsid  int
}

// New returns a watcher.
func New(cfg Config) (*Watcher, error) {
	if cfg.Bridges == nil {
		cfg.Bridges = DefaultBridges
	}
	for _, p := range cfg.Bridges {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("bridge pattern %q: %w", p, err)
		}
	}
	if cfg.NetnsDirs == nil {
		cfg.NetnsDirs = DefaultNetnsDirs
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{
		cfg:    cfg,
		log:    log.With("subsys", "runtime.linkwatch"),
		queue:  endpoint.NewQueue[Event](),
		veths:  map[int]*veth{},
		names:  map[int]string{},
		nsfile: map[string]nsEntry{},
		ready:  make(chan struct{}),
	}, nil
}

// Events delivers the reports in kernel order; closed when Run returns.
func (w *Watcher) Events() <-chan Event { return w.queue.Events() }

// Ready is closed once the watcher is subscribed and has listed the
// existing links: every veth created after that is reported.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Snapshot returns the veths currently on managed bridges, as last reported.
func (w *Watcher) Snapshot() []Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []Event
	for _, v := range w.veths {
		if v.reported {
			out = append(out, v.ev)
		}
	}
	return out
}

// Run watches until ctx is done.
func (w *Watcher) Run(ctx context.Context) error {
	qctx, qcancel := context.WithCancel(context.Background())
	qdone := make(chan struct{})
	go func() { w.queue.Run(qctx); close(qdone) }()
	defer func() { qcancel(); <-qdone }()
	for {
		err := w.subscription(ctx)
		if ctx.Err() != nil {
			return nil
		}
		w.log.Warn("link subscription failed; resubscribing", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (w *Watcher) subscription(ctx context.Context) error {
	ch := make(chan netlink.LinkUpdate, 1024)
	done := make(chan struct{})
	defer close(done)
	errc := make(chan error, 1)
	err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case errc <- err:
			default:
			}
		},
		ReceiveBufferSize:      8 << 20,
		ReceiveBufferForceSize: true,
	})
	if err != nil {
		return fmt.Errorf("subscribe to link notifications: %w", err)
	}
	if err := w.relist(); err != nil {
		return err
	}
	w.readyOnce.Do(func() { close(w.ready) })
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case u, ok := <-ch:
			if !ok {
				return errors.New("link notification channel closed")
			}
			w.handle(u.Header.Type == unix.RTM_DELLINK, u.Link, time.Now())
		}
	}
}

// relist reconciles with the kernel's current links.
func (w *Watcher) relist() error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	now := time.Now()
	present := map[int]bool{}
	for _, l := range links {
		present[l.Attrs().Index] = true
		w.handle(false, l, now)
	}
	w.mu.Lock()
	var gone []int
	for idx := range w.veths {
		if !present[idx] {
			gone = append(gone, idx)
		}
	}
	w.mu.Unlock()
	for _, idx := range gone {
		w.mu.Lock()
		v := w.veths[idx]
		delete(w.veths, idx)
		w.mu.Unlock()
		if v != nil && v.reported {
			ev := v.ev
			ev.Type, ev.Time = Removed, now
			w.queue.Push(ev)
		}
	}
	return nil
}

func (w *Watcher) managed(master string) bool {
	for _, p := range w.cfg.Bridges {
		if ok, _ := path.Match(p, master); ok {
			return true
		}
	}
	return false
}

func (w *Watcher) handle(deleted bool, l netlink.Link, now time.Time) {
	a := l.Attrs()
	w.mu.Lock()
	defer w.mu.Unlock()
	if deleted {
		delete(w.names, a.Index)
		if v := w.veths[a.Index]; v != nil {
			delete(w.veths, a.Index)
			if v.reported {
				ev := v.ev
				ev.Type, ev.Time = Removed, now
				w.queue.Push(ev)
			}
		}
		// Moving a veth end into another namespace is announced as its
		// deletion here, and the end that stays gets no notification of
		// its own although its IFLA_LINK_NETNSID changed: re-read it.
		for idx, v := range w.veths {
			if v.reported && v.ev.PeerNetnsID < 0 && v.ev.PeerIfindex == a.Index {
				if l, err := netlink.LinkByIndex(idx); err == nil {
					w.mu.Unlock()
					w.handle(false, l, now)
					w.mu.Lock()
				}
				break
			}
		}
		return
	}
	w.names[a.Index] = a.Name
	if l.Type() != "veth" {
		return
	}
	master := ""
	if a.MasterIndex != 0 {
		master = w.names[a.MasterIndex]
		if master == "" {
			if m, err := netlink.LinkByIndex(a.MasterIndex); err == nil {
				master = m.Attrs().Name
				w.names[a.MasterIndex] = master
			}
		}
	}
	v := w.veths[a.Index]
	if v == nil {
		v = &veth{}
		w.veths[a.Index] = v
	}
	isManaged := a.MasterIndex != 0 && w.managed(master)
	if !isManaged {
		if v.reported {
			ev := v.ev
			ev.Type, ev.Time = Removed, now
			w.queue.Push(ev)
		}
		delete(w.veths, a.Index)
		return
	}
	ev := Event{
		Time:        now,
		Ifindex:     a.Index,
		Name:        a.Name,
		MAC:         append(net.HardwareAddr(nil), a.HardwareAddr...),
		MasterIndex: a.MasterIndex,
		Master:      master,
		PeerIfindex: a.ParentIndex,
		PeerNetnsID: a.NetNsID,
	}
	if a.NetNsID >= 0 {
		ev.PeerNetnsInode = w.netnsInodeLocked(a.NetNsID)
		if ev.PeerNetnsInode != 0 {
			for _, r := range w.cfg.Resolvers {
				if ep, ok := r.ContainerByNetns(ev.PeerNetnsInode); ok {
					ev.EndpointID, ev.Runtime = ep.ID, ep.Runtime
					if len(ep.Containers) > 0 {
						ev.Container = ep.Containers[0]
					}
					break
				}
			}
		}
	}
	switch {
	case !v.reported:
		ev.Type = Added
	case v.ev.Name != ev.Name || v.ev.MasterIndex != ev.MasterIndex || v.ev.PeerIfindex != ev.PeerIfindex ||
		v.ev.PeerNetnsID != ev.PeerNetnsID || v.ev.PeerNetnsInode != ev.PeerNetnsInode || v.ev.EndpointID != ev.EndpointID:
		ev.Type = Updated
	default:
		return
	}
	v.ev, v.reported = ev, true
	w.queue.Push(ev)
}

// netnsInodeLocked maps a netnsid (as the daemon's namespace numbers it) to
// the inode of a namespace file in NetnsDirs, scanning files it has not
// seen yet. 0 when no file matches.
func (w *Watcher) netnsInodeLocked(nsid int) uint64 {
	for p, e := range w.nsfile {
		if e.nsid == nsid {
			// nsids are reused after a namespace dies: check the file still
			// names a live namespace with this id.
			if st, err := os.Stat(p); err == nil {
				if sys, ok := st.Sys().(*unix.Stat_t); ok && sys.Ino == e.inode {
					return e.inode
				}
			}
			delete(w.nsfile, p)
		}
	}
	for _, dir := range w.cfg.NetnsDirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, de := range ents {
			p := filepath.Join(dir, de.Name())
			if e, ok := w.nsfile[p]; ok && e.nsid >= 0 {
				continue
			}
			e, ok := readNsEntry(p)
			if !ok {
				continue
			}
			w.nsfile[p] = e
			if e.nsid == nsid {
				return e.inode
			}
		}
	}
	return 0
}

func readNsEntry(p string) (nsEntry, bool) {
	f, err := os.Open(p)
	if err != nil {
		return nsEntry{}, false
	}
	defer f.Close()
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil || sfs.Type != unix.NSFS_MAGIC {
		return nsEntry{}, false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nsEntry{}, false
	}
	id, err := netlink.GetNetNsIdByFd(int(f.Fd()))
	if err != nil {
		return nsEntry{}, false
	}
	return nsEntry{inode: st.Ino, nsid: id}, true
}
