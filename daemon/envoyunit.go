package daemon

import (
	"context"
	"log/slog"
	"os/exec"
	"strings"
	"time"

	"github.com/membrane-fw/membrane/bpf"
)

// unitCgroup follows the cgroup of the systemd unit that runs Envoy
// (l7.envoy_unit), so that the datapath takes from-proxy marks from
// Envoy's sockets and no others (bpf.Config.ProxyCgroup). The unit's
// cgroup is made again, with a new id, each time the unit starts; while
// it is not running there is none, and no socket's mark counts
// (bpf.NoCgroup): nothing is trusted that Membrane did not start.
type unitCgroup struct {
	unit string
	// path is the unit's cgroup in the cgroup2 hierarchy, "" when unknown
	// (envoyUnitCgroupPath).
	path func(unit string) string
	// set puts an id in force (Datapath.SetProxyCgroup).
	set func(id uint64) error
	log *slog.Logger

	rel string // the path last found
	cur uint64 // the id in force
}

// envoyUnitCgroupPath asks systemd for unit's cgroup ("/system.slice/x.service"),
// "" when the unit is not running (systemd names none) or systemctl fails.
func envoyUnitCgroupPath(unit string) string {
	out, err := exec.Command("systemctl", "show", "--property=ControlGroup", "--value", "--", unit).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// id is the id of the unit's cgroup, bpf.NoCgroup when it has none.
func (u *unitCgroup) id() uint64 {
	if u.rel != "" {
		if id, err := bpf.CgroupID(u.rel); err == nil {
			return id
		}
	}
	// Not found where it was: ask again (the unit may have moved, or
	// started for the first time).
	if u.rel = u.path(u.unit); u.rel == "" {
		return bpf.NoCgroup
	}
	id, err := bpf.CgroupID(u.rel)
	if err != nil {
		return bpf.NoCgroup
	}
	return id
}

// sync puts the unit's current cgroup id in force when it changed.
func (u *unitCgroup) sync() {
	id := u.id()
	if id == u.cur {
		return
	}
	if err := u.set(id); err != nil {
		u.log.Error("cannot update the Envoy unit's cgroup in the datapath: from-proxy marks of the running Envoy may not count", "unit", u.unit, "err", err)
		return
	}
	if id == bpf.NoCgroup {
		u.log.Info("the Envoy unit has no cgroup (not running): no socket's from-proxy mark counts", "unit", u.unit)
	} else {
		u.log.Info("from-proxy marks count from the Envoy unit's cgroup", "unit", u.unit, "cgroup", u.rel, "id", id)
	}
	u.cur = id
}

// run syncs every period until ctx ends.
func (u *unitCgroup) run(ctx context.Context, period time.Duration) error {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			u.sync()
		}
	}
}
