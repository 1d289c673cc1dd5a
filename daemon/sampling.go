package daemon

import (
	"github.com/membrane-fw/membrane/bpf"
	"github.com/membrane-fw/membrane/daemon/metrics"
)

// ---- metrics sampling (scrape time, any goroutine)

func (r *reconciler) sampleVerdicts() []metrics.VerdictCount {
	c, err := r.dp.Counters()
	if err != nil {
		return nil
	}
	var out []metrics.VerdictCount
	for k, v := range c.Verdicts {
		verdict := "allowed"
		switch {
		case k.Reason == bpf.ReasonAudit:
			verdict = "audit"
		case k.Reason == bpf.ReasonRedirect, k.Reason == bpf.ReasonProxyTimeWait:
			// proxy-timewait counts, at the bridge, packets the
			// container's program counted as redirect already.
			verdict = "redirect"
		case k.Reason.Drop():
			verdict = "dropped"
		}
		out = append(out, metrics.VerdictCount{Direction: k.Direction.String(), Reason: k.Reason.String(), Verdict: verdict, Packets: v.Packets, Bytes: v.Bytes})
	}
	return out
}

func (r *reconciler) sampleEventsLost() (uint64, bool) {
	c, err := r.dp.Counters()
	if err != nil {
		return 0, false
	}
	return c.EventsLost, true
}

func (r *reconciler) sampleMaps() []metrics.MapFill {
	var out []metrics.MapFill
	if eps, err := r.dp.Endpoints(); err == nil {
		out = append(out, metrics.MapFill{Map: "endpoints", Entries: len(eps), Capacity: r.cfg.Maps.Endpoints})
	}
	if ipc, err := r.dp.IPCache(); err == nil {
		// maps.ipcache sizes each of its two tables (full-length
		// addresses, shorter prefixes): the fuller one is the one a
		// write fails in, at a fill ratio of 1.
		out = append(out, metrics.MapFill{Map: "ipcache", Entries: bpf.IPCacheFill(ipc).Fuller(), Capacity: r.cfg.Maps.IPCache})
	}
	if n, err := r.dp.ConntrackEntries(); err == nil {
		out = append(out, metrics.MapFill{Map: "conntrack", Entries: n, Capacity: r.cfg.Maps.Conntrack})
	}
	// The identities with a policy in the map: those of the endpoints
	// there are, not those the store keeps for identity_grace.
	if n, err := r.dp.PolicyIdentities(); err == nil {
		out = append(out, metrics.MapFill{Map: "policy", Entries: n, Capacity: r.cfg.Maps.Policy})
	}
	return out
}
