package daemon

import (
	"context"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/vishvananda/netlink"

	"github.com/membrane-fw/membrane/policies"
)

// watchPolicyDir calls reload (debounced) whenever something in dir
// changes. Editors write a file in several steps (truncate, write, rename
// a temporary over it): debounce gathers those into one reload, and
// reload reads the whole directory, so the order of events does not
// matter. A directory that does not exist yet is polled for.
//
// watching (nil: none) is called once, when the watch is in place or the
// directory was found missing (it is then read again once it appears).
// The reconciler's first load waits for it: a load before the watch
// existed would miss a file written in between until the next change.
func watchPolicyDir(ctx context.Context, dir string, debounce time.Duration, reload func(context.Context, time.Time), watching func(), log *slog.Logger) error {
	log = log.With("subsys", "policywatch")
	dir = filepath.Clean(dir)
	var once sync.Once
	started := func() {
		if watching != nil {
			once.Do(watching)
		}
	}
	defer started() // never leave the reconciler waiting
	// The reconciler loads the set when the watch has started; after
	// that, every time the directory comes (back), the set is read again
	// once the watch is in place, so that no file written meanwhile goes
	// unseen.
	appeared := false
	for {
		for {
			if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
				break
			}
			appeared = true
			started()
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(2 * time.Second):
			}
		}
		gone, err := watchPolicyDirOnce(ctx, dir, debounce, reload, appeared, started, log)
		if err != nil || !gone {
			return err
		}
		appeared = true
	}
}

// watchPolicyDirOnce watches dir until ctx ends (false) or dir goes away
// (true, after a reload that reports it). reloadFirst reads the set once
// the watch is in place: dir has just (re)appeared, and a reload before
// the watch existed would miss files written in between, a whole
// directory renamed into place included.
func watchPolicyDirOnce(ctx context.Context, dir string, debounce time.Duration, reload func(context.Context, time.Time), reloadFirst bool, watching func(), log *slog.Logger) (gone bool, err error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return false, err
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		if _, serr := os.Stat(dir); serr != nil {
			return true, nil // went away again before the watch: poll
		}
		return false, err
	}
	// The parent too, for dir's own name: when dir is a symbolic link
	// swapped to a new target (ln -s v2 tmp && mv -T tmp policies.d, the
	// usual atomic deploy), the watch above stays on the old target, which
	// does not change.
	if parent := filepath.Dir(dir); parent != dir {
		if err := w.Add(parent); err != nil {
			log.Debug("cannot watch the policy directory's parent", "dir", parent, "err", err)
		}
	}
	// links are the paths dir's symlinked policy files lead to; their
	// directories are watched besides dir.
	links := map[string]bool{}
	watchLinks := func() {
		var dirs map[string]bool
		links, dirs = linkTargets(dir)
		watched := map[string]bool{}
		for _, d := range w.WatchList() {
			watched[d] = true
			if !dirs[d] && d != dir && d != filepath.Dir(dir) {
				_ = w.Remove(d)
			}
		}
		for d := range dirs {
			if !watched[d] && d != dir && d != filepath.Dir(dir) {
				if err := w.Add(d); err != nil {
					log.Debug("cannot watch a policy link's directory", "dir", d, "err", err)
				}
			}
		}
	}
	watchLinks()
	watching()
	if reloadFirst {
		reload(ctx, time.Now())
	}
	var timer *time.Timer
	var fire <-chan time.Time
	var first time.Time
	for {
		select {
		case <-ctx.Done():
			return false, nil
		case ev, ok := <-w.Events:
			if !ok {
				return false, nil
			}
			if ev.Name != dir && filepath.Dir(ev.Name) != dir && !links[ev.Name] {
				continue // elsewhere in a link target's directory
			}
			log.Debug("policy directory changed", "op", ev.Op.String(), "name", ev.Name)
			if ev.Name == dir && ev.Has(fsnotify.Create) {
				// Something new under dir's name (a swapped link, a
				// directory renamed into place): watch it and read it.
				return true, nil
			}
			if ev.Name == dir && (ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)) {
				// The directory itself went away: reload (which reports
				// the error and keeps the last good set), then wait for it
				// to come back.
				reload(ctx, time.Now())
				return true, nil
			}
			if first.IsZero() {
				first = time.Now()
			}
			if timer == nil {
				timer = time.NewTimer(debounce)
			} else {
				timer.Reset(debounce)
			}
			fire = timer.C
		case err, ok := <-w.Errors:
			if !ok {
				return false, nil
			}
			// An overflow loses events: reload to be sure.
			log.Warn("policy directory watch", "err", err)
			reload(ctx, time.Now())
		case <-fire:
			fire = nil
			watchLinks()
			reload(ctx, first)
			first = time.Time{}
		}
	}
}

// linkTargets returns the paths that dir's symlinked policy files lead to,
// every hop of each link, and the directories holding them. A change there
// changes the policy set as much as one in dir does, but inotify on dir
// does not see it: those directories are watched too, for these names.
func linkTargets(dir string) (paths, dirs map[string]bool) {
	paths, dirs = map[string]bool{}, map[string]bool{}
	files, err := policies.ListDir(dir)
	if err != nil {
		return paths, dirs
	}
	for _, p := range files {
		for hop := 0; hop < 16; hop++ {
			fi, err := os.Lstat(p)
			if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
				break
			}
			t, err := os.Readlink(p)
			if err != nil {
				break
			}
			if !filepath.IsAbs(t) {
				t = filepath.Join(filepath.Dir(p), t)
			}
			p = filepath.Clean(t)
			paths[p] = true
			dirs[filepath.Dir(p)] = true
		}
	}
	return paths, dirs
}

// watchHostAddrs reports the host's addresses (every interface of the
// daemon's network namespace) now and after every change.
func watchHostAddrs(ctx context.Context, report func(context.Context, []netip.Prefix), log *slog.Logger) error {
	log = log.With("subsys", "hostaddr")
	for ctx.Err() == nil {
		updates := make(chan netlink.AddrUpdate, 64)
		done := make(chan struct{})
		err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{
			ErrorCallback: func(err error) {
				if ctx.Err() == nil {
					log.Warn("address subscription", "err", err)
				}
			},
		})
		if err != nil {
			close(done)
			log.Warn("cannot watch host addresses; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
			continue
		}
		var last []netip.Prefix
		relist := func() {
			addrs, err := hostAddrs()
			if err != nil {
				log.Warn("listing host addresses", "err", err)
				return
			}
			if !slices.Equal(addrs, last) {
				last = addrs
				report(ctx, addrs)
			}
		}
		relist()
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case _, ok := <-updates:
				if !ok {
					break loop // subscription broke: resubscribe and relist
				}
				// Several updates come in a burst; list once after it.
				drain(updates)
				relist()
			}
		}
		close(done)
	}
	return nil
}

func drain(ch <-chan netlink.AddrUpdate) {
	for {
		select {
		case <-ch:
		case <-time.After(20 * time.Millisecond):
			return
		}
	}
}

func hostAddrs() ([]netip.Prefix, error) {
	list, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range list {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out), nil
}
