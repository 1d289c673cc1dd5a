package daemon

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/daemon/identity"
	"github.com/membrane-fw/membrane/internal/version"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/runtime/endpoint"
)

// ---- the published view

// view is an immutable snapshot of the loop's state for the API, the flow
// reader and metrics.
type view struct {
	status     api.Status
	endpoints  []api.Endpoint
	byIfindex  map[int]*api.Endpoint
	byAddr     map[netip.Addr]*api.Endpoint
	labels     map[policies.Identity]policies.Labels
	cidrs      map[policies.Identity]netip.Prefix // CIDR identities of the model
	identities []api.Identity
	set        *policies.Set
	rules      []*policies.Rule
	env        policies.Env
	policy     api.Policy
	// networks are the Docker networks of the Docker endpoints, as the
	// proxy gets them (dockerNetworks), for the live trace.
	networks *proxy.Networks
	// judgedInit holds the endpoints (by ID) whose traffic the datapath
	// judges as init: no identity could be allocated, their identity's
	// policy could not be written (held), or the endpoints map had no room
	// for them (unwritten). A live trace judges them so.
	judgedInit map[uint32]bool
	// epLabels are the identity labels of endpoints[i]. Which policies
	// select which endpoint is computed on the first API request for the
	// view (selection), not on every change: with 1,000 policies it is
	// the costliest part of a view.
	epLabels  []policies.Labels
	selection sync.Once
}

// selected fills endpoints[i].Policies and policy.Policies once per view.
func (v *view) selected() {
	v.selection.Do(func() {
		if v.set == nil {
			return
		}
		byPolicy := make([][]uint32, len(v.set.Policies))
		for i := range v.endpoints {
			e := &v.endpoints[i]
			if e.HostNetwork {
				continue
			}
			for j, p := range v.set.Policies {
				if p.Selector.Matches(v.epLabels[i]) {
					e.Policies = append(e.Policies, p.Name)
					byPolicy[j] = append(byPolicy[j], e.ID)
				}
			}
		}
		for j, p := range v.set.Policies {
			ps := api.PolicySummary{Name: p.Name, File: p.Pos.File, Line: p.Pos.Line, Selector: p.Selector.Source, Rules: len(p.Rules), Endpoints: byPolicy[j]}
			if ps.Endpoints == nil {
				ps.Endpoints = []uint32{}
			}
			slices.Sort(ps.Endpoints)
			v.policy.Policies = append(v.policy.Policies, ps)
		}
	})
}

type viewHolder struct {
	mu sync.RWMutex
	v  *view
}

func (h *viewHolder) get() *view {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.v
}

func (h *viewHolder) set(v *view) {
	h.mu.Lock()
	h.v = v
	h.mu.Unlock()
}

func containerNames(ep endpoint.Endpoint) []string {
	var out []string
	for _, c := range ep.Containers {
		out = append(out, c.Name)
	}
	return out
}

func (r *reconciler) publish() {
	v := &view{
		byIfindex:  map[int]*api.Endpoint{},
		byAddr:     map[netip.Addr]*api.Endpoint{},
		labels:     map[policies.Identity]policies.Labels{},
		cidrs:      map[policies.Identity]netip.Prefix{},
		judgedInit: map[uint32]bool{},
		set:        r.set,
	}
	if r.model != nil {
		for _, c := range r.model.CIDRs {
			v.cidrs[c.Identity] = c.Prefix
		}
	}
	if r.set != nil {
		v.rules = r.set.Rules()
	}
	idEndpoints := map[policies.Identity]int{}
	keys := slices.Sorted(maps.Keys(r.eps))
	for _, k := range keys {
		st := r.eps[k]
		unenforced := r.unenforced(st)
		if judgedAs(st) == policies.IdentityInit {
			v.judgedInit[st.id] = true
		}
		e := api.Endpoint{
			ID: st.id, Identity: uint32(st.identity), Labels: st.ep.Labels, HostNetwork: st.ep.NetworkMode == endpoint.ModeHost,
			Audit: st.audit, Runtime: string(st.ep.Runtime), Addresses: []string{}, Policies: []string{},
			Enforcing:  r.synced && st.ep.NetworkMode != endpoint.ModeHost && len(st.ifaces) > 0 && !st.unwritten && len(unenforced) == 0,
			EnforcedAt: st.enforced, Unenforced: unenforced, Stale: st.ep.Stale,
		}
		for _, a := range st.ep.Addrs() {
			e.Addresses = append(e.Addresses, a.String())
		}
		for _, c := range st.ep.Containers {
			e.Containers = append(e.Containers, api.Container{ID: c.ID, Name: c.Name, Runtime: string(st.ep.Runtime), Namespace: c.Namespace})
		}
		for _, i := range st.ep.Interfaces {
			if i.HostIfindex > 0 {
				e.Interfaces = append(e.Interfaces, api.Interface{Name: i.HostName, Ifindex: i.HostIfindex, Network: i.Network, NoICC: i.NoICC})
			}
		}
		v.endpoints = append(v.endpoints, e)
		v.epLabels = append(v.epLabels, st.labels)
		idEndpoints[st.identity]++
		if !e.HostNetwork {
			v.env.Endpoints = append(v.env.Endpoints, policies.Endpoint{Name: containerName(st.ep), Labels: st.labels, Addrs: st.ep.Addrs()})
		}
	}
	for i := range v.endpoints {
		e := &v.endpoints[i]
		for _, itf := range e.Interfaces {
			v.byIfindex[itf.Ifindex] = e
		}
		if !e.HostNetwork {
			for _, a := range e.Addresses {
				if ad, err := netip.ParseAddr(a); err == nil {
					v.byAddr[ad] = e
				}
			}
		}
	}
	for _, res := range identity.Reserved() {
		v.identities = append(v.identities, api.Identity{ID: uint32(res.ID), Labels: map[string]string{"reserved": res.Name}, Reserved: res.Name, Endpoints: idEndpoints[res.ID]})
	}
	for _, id := range r.ids.List() {
		v.labels[id.ID] = id.Labels
		v.identities = append(v.identities, api.Identity{ID: uint32(id.ID), Labels: id.Labels, Endpoints: idEndpoints[id.ID]})
	}
	for _, p := range r.hostAddrs {
		v.env.HostAddrs = append(v.env.HostAddrs, p.Addr())
	}
	v.networks = r.dockerNetworks()
	v.env.Enforcement = r.cfg.Enforcement
	v.env.Audit = r.cfg.Audit
	v.env.AuditSelector = r.auditSel

	nPol, nRules := 0, 0
	if r.set != nil {
		nPol = len(r.set.Policies)
		nRules = len(v.rules)
	}
	problems := []string{}
	for _, k := range slices.Sorted(maps.Keys(r.problems)) {
		problems = append(problems, r.problems[k])
	}
	for _, k := range keys {
		st := r.eps[k]
		if len(r.unenforced(st)) > 0 {
			problems = append(problems, fmt.Sprintf("endpoint %d (%s): no program sees %s; its traffic there is not judged",
				st.id, strings.Join(containerNames(st.ep), ","), strings.Join(r.unenforced(st), "; ")))
		}
		if st.ep.Stale != "" {
			problems = append(problems, fmt.Sprintf("endpoint %d (%s): %s; its interfaces and addresses as last read stay enforced, and the runtime source reads them again until it can",
				st.id, strings.Join(containerNames(st.ep), ","), st.ep.Stale))
		}
	}
	v.status = api.Status{
		Version: version.Version, Up: true, Reconciled: r.reconciled, StartedAt: r.startedAt, LastReconcile: r.lastSync,
		Endpoints: len(r.eps), Identities: r.ids.Len(), Policies: nPol, Rules: nRules,
		PolicyRevision: r.revision, PolicyDir: r.cfg.PolicyDir, LastPolicyError: r.policyErr,
		Enforcement: r.cfg.Enforcement, Audit: r.cfg.Audit, Attach: r.cfg.Attach, Errors: problems,
		L7Engine: r.l7Name(), L7Port: r.l7Port(),
	}
	v.policy = api.Policy{Revision: r.revision, Dir: r.cfg.PolicyDir, LoadedAt: r.setLoaded, Files: r.setFiles, LastPolicyError: r.policyErr, Policies: []api.PolicySummary{}}
	if v.policy.Files == nil {
		v.policy.Files = []string{}
	}
	r.view.set(v)

	rev := fmt.Sprintf("revision %d", r.revision)
	if r.setUnwritten {
		// Read before the first reconcile: no revision until it is
		// checked against the maps there (checkFirstSet).
		rev = "not checked against the maps yet"
	}
	st := fmt.Sprintf("%d endpoints, %d identities, %d policies (%s)", len(r.eps), r.ids.Len(), nPol, rev)
	if r.policyErr != nil {
		st += "; policy set rejected, last good set enforced"
	}
	if len(problems) > 0 {
		st += fmt.Sprintf("; %d datapath problems", len(problems))
	}
	if st != r.lastStatus && r.notifier != nil {
		r.lastStatus = st
		r.notifier.Status(st)
	}
}

func containerName(ep endpoint.Endpoint) string {
	if len(ep.Containers) > 0 {
		return ep.Containers[0].Name
	}
	return ep.ID
}

// unenforced describes st's interfaces whose traffic no program sees: those
// the runtime found without a host-side veth (endpoint.Endpoint.Unenforced),
// and veths on a bridge that `bridges` does not name, which get none.
func (r *reconciler) unenforced(st *epState) []string {
	out := st.ep.Unenforced
	for _, itf := range st.ep.Interfaces {
		if itf.HostIfindex > 0 && !r.managed(itf) {
			out = append(slices.Clone(out), fmt.Sprintf("%s (veth %s on bridge %q, which bridges does not name)", itf.Name, itf.HostName, itf.Bridge))
		}
	}
	return out
}
