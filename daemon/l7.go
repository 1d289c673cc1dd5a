package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/membrane-fw/membrane/bpf"
	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/builtin"
	"github.com/membrane-fw/membrane/proxy/envoy"
	"github.com/membrane-fw/membrane/runtime/endpoint"
)

// envoyRunDir is where the Envoy engine keeps its xDS and admin sockets,
// bootstrap and access-log FIFO; --cleanup removes it.
const envoyRunDir = "/run/membrane/envoy"

// l7 is the daemon's side of the L7 proxy: the engine, and what the
// datapath needs besides the container programs (policy routing, the
// nftables notrack table, the bridge program on every managed bridge).
type l7 struct {
	log    *slog.Logger
	engine proxy.Engine
	// bridges holds the bridge ifindexes that have the bridge program
	// (loop state: touched by the reconciler goroutine only).
	bridges map[int]bool

	// ip6Isolated caches dockerIsolatesIPv6, looked up at ip6At.
	ip6Isolated bool
	ip6At       time.Time
}

// startL7 prepares the host for the redirect and starts the configured
// engine. Its listener is up before the first policy with a proxy port is
// written, so no redirected connection finds nothing listening.
func startL7(ctx context.Context, cfg *config.Config, log *slog.Logger, sink proxy.EventSink) (*l7, error) {
	log = log.With("subsys", "l7")
	name, envoyPath, err := proxy.ChooseEngine(cfg.L7.Engine, nil)
	if err != nil {
		return nil, err
	}
	if cfg.L7.EnvoyUnit != "" && name == proxy.EngineBuiltin {
		// auto without an envoy binary: the unit runs Envoy, so use it.
		name = proxy.EngineEnvoy
	}
	if err := proxy.DefaultRouting.Install(nil); err != nil {
		return nil, fmt.Errorf("l7: policy routing: %w", err)
	}
	if err := prepareProxyPath(log); err != nil {
		return nil, err
	}
	port := uint16(cfg.L7.Port)
	var eng proxy.Engine
	if name == proxy.EngineEnvoy {
		e, err := startEnvoy(ctx, cfg, port, envoyPath, log, sink)
		switch {
		case err == nil:
			eng = e
		case cfg.L7.Engine == config.L7Auto && cfg.L7.EnvoyUnit == "":
			// auto promises a working proxy: the built-in one it is.
			log.Warn("envoy did not start; using the built-in L7 proxy", "err", err)
		default:
			return nil, err
		}
	}
	if eng == nil {
		ls, err := proxy.ListenTransparent(ctx, port)
		if err != nil {
			return nil, fmt.Errorf("l7: listening on proxy port %d: %w", port, err)
		}
		e, err := builtin.New(builtin.Config{Listeners: ls, Logger: log, Events: sink,
			MaxConnections: cfg.L7.MaxConnections, MaxConnectionsPerSource: cfg.L7.MaxConnectionsPerSource})
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, err
		}
		eng = e
	}
	log.Info("L7 proxy started", "engine", eng.Name(), "port", eng.Port())
	return &l7{log: log, engine: eng, bridges: map[int]bool{}}, nil
}

// prepareProxyPath installs bpf.PrepareProxyPath with this process's
// cgroup, whose sockets (the built-in engine's; an Envoy never sets the
// refused mark) are the only ones whose refused mark is trusted. Without a
// cgroup of its own, or where nft cannot match one, the mark is trusted
// from any socket, as the datapath does with ProxyCgroup 0, and the daemon
// warns.
func prepareProxyPath(log *slog.Logger) error {
	cg, err := bpf.SelfCgroup()
	if err != nil {
		log.Warn("no cgroup of its own for nftables: the refused mark is trusted from any socket", "err", err)
		return bpf.PrepareProxyPath(bpf.Cgroup{})
	}
	if err := bpf.PrepareProxyPath(cg); err != nil {
		log.Warn("nftables cannot match the proxy's cgroup: the refused mark is trusted from any socket", "cgroup", cg.Path, "err", err)
		return bpf.PrepareProxyPath(bpf.Cgroup{})
	}
	return nil
}

func startEnvoy(ctx context.Context, cfg *config.Config, port uint16, envoyPath string, log *slog.Logger, sink proxy.EventSink) (*envoy.Engine, error) {
	e, err := envoy.New(envoy.Config{Port: port, RunDir: envoyRunDir, EnvoyPath: envoyPath, Unit: cfg.L7.EnvoyUnit,
		MaxConnections: cfg.L7.MaxConnections, Logger: log, Events: sink})
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = e.WaitReady(wctx)
	cancel()
	if err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

func (p *l7) close() {
	if p == nil {
		return
	}
	if err := p.engine.Close(); err != nil {
		p.log.Warn("stopping the L7 proxy", "err", err)
	}
}

// proxyPort is the datapath's proxy port for every L7 ruleset.
func (p *l7) proxyPort(uint32) uint16 { return p.engine.Port() }

// l7Name and l7Port are what status shows.
func (r *reconciler) l7Name() string {
	if r.l7 == nil {
		return ""
	}
	return r.l7.engine.Name()
}

func (r *reconciler) l7Port() uint16 {
	if r.l7 == nil {
		return 0
	}
	return r.l7.engine.Port()
}

// l7Problems is what the engine reports keeps it from serving
// (proxy.ProblemReporter); r.l7 is set before the API serves and never
// changes, so any goroutine may call it.
func (r *reconciler) l7Problems() []string {
	if r.l7 == nil {
		return nil
	}
	if pr, ok := r.l7.engine.(proxy.ProblemReporter); ok {
		return pr.Problems()
	}
	return nil
}

// cleanupL7 removes what startL7 set up on the host (--cleanup).
func cleanupL7() error {
	var errs []error
	errs = append(errs, proxy.DefaultRouting.Remove(nil))
	errs = append(errs, bpf.RemoveProxyPath())
	if err := os.RemoveAll(envoyRunDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// updateL7 hands the current model and ipcache to the engine: the next
// request on every connection, kept-alive ones included, is judged by it.
func (r *reconciler) updateL7() {
	if r.l7 == nil || r.model == nil {
		return
	}
	res := proxy.NewModelResolver(r.model, r.wantIPCache(), proxy.RuleNames(r.set)).WithNetworks(r.dockerNetworks())
	r.problem("l7", "l7-update", r.l7.engine.Update(res))
}

// dockerNetworks is, for the proxy, the Docker networks each Docker
// endpoint is attached to (and its addresses on each), so that the proxy
// never connects two containers that Docker keeps apart; the live trace
// reports the same (backend.Trace). Without a proxy, whether dockerd
// isolates IPv6 is not looked up, and IPv6 is not judged: the trace then
// says nothing it does not know.
func (r *reconciler) dockerNetworks() *proxy.Networks {
	var eps [][]proxy.Attachment
	for _, st := range r.eps {
		if st.ep.Runtime != endpoint.RuntimeDocker || st.ep.NetworkMode != endpoint.ModeBridge {
			continue
		}
		var atts []proxy.Attachment
		for _, itf := range st.ep.Interfaces {
			a := proxy.Attachment{Network: itf.NetworkID, NoICC: itf.NoICC}
			for _, p := range itf.Addrs {
				a.Addrs = append(a.Addrs, p.Addr())
			}
			atts = append(atts, a)
		}
		eps = append(eps, atts)
	}
	n := proxy.NewNetworks(eps)
	if r.l7 == nil || !r.l7.dockerIsolatesIPv6() {
		n = n.WithoutIPv6Isolation()
	}
	return n
}

// dockerIsolatesIPv6 reports whether dockerd filters IPv6 between its
// networks. With ip6tables (the default from Docker 27) it has DOCKER*
// chains in ip6tables' filter table, or with the nftables backend (Docker
// 29) a table "ip6 docker-bridges"; without either, IPv6 crosses Docker's
// networks freely and the proxy must not refuse it. Anything uncertain
// (no ip6tables binary, an error) counts as isolated: a false refusal is
// better than a bypass. Looked up at most once a minute.
func (p *l7) dockerIsolatesIPv6() bool {
	if time.Since(p.ip6At) < time.Minute {
		return p.ip6Isolated
	}
	p.ip6At = time.Now()
	p.ip6Isolated = true
	if err := exec.Command("nft", "list", "table", "ip6", "docker-bridges").Run(); err == nil {
		return true
	}
	out, err := exec.Command("ip6tables", "-w", "-S").Output()
	if err != nil {
		return true
	}
	p.ip6Isolated = strings.Contains(string(out), "-N DOCKER")
	return p.ip6Isolated
}

// attachBridge puts the bridge program on the bridge a managed veth is a
// port of (once per bridge; the kernel keeps it until --cleanup).
func (r *reconciler) attachBridge(master int) {
	if r.l7 == nil || master <= 0 || r.l7.bridges[master] {
		return
	}
	err := r.dp.AttachBridge(master)
	r.problem(fmt.Sprintf("bridge/%d", master), "attach-bridge", err)
	if err == nil {
		r.l7.bridges[master] = true
		if l, lerr := net.InterfaceByIndex(master); lerr == nil {
			r.log.Debug("L7 bridge program attached", "bridge", l.Name, "ifindex", master)
		}
	}
}

// pruneBridges removes the bridge program's pins of bridges that are gone
// (a deleted Docker network), on full resyncs.
func (r *reconciler) pruneBridges() {
	if r.l7 == nil {
		return
	}
	atts, err := r.dp.Bridges()
	if err != nil {
		r.log.Warn("listing bridge attachments", "err", err)
		return
	}
	for _, a := range atts {
		if _, err := net.InterfaceByIndex(a.Ifindex); err == nil {
			continue
		}
		r.problem(fmt.Sprintf("bridge/%d", a.Ifindex), "detach-bridge", r.dp.DetachBridge(a.Ifindex))
		delete(r.problems, fmt.Sprintf("bridge/%d", a.Ifindex))
		delete(r.l7.bridges, a.Ifindex)
	}
}

// bridgeOf is the bridge a host-side veth is a port of: the link
// watcher's report, else the kernel's (0: none).
func (r *reconciler) bridgeOf(ifx int) int {
	if ev, ok := r.veths[ifx]; ok && ev.MasterIndex > 0 {
		return ev.MasterIndex
	}
	br, err := bpf.BridgeOf(ifx)
	if err != nil {
		r.log.Debug("finding the bridge of a veth", "ifindex", ifx, "err", err)
	}
	return br
}

// forgetBridges makes the next link event re-attach (a bridge may have
// been deleted and recreated with the same ifindex; attaching is
// idempotent).
func (r *reconciler) forgetBridges() {
	if r.l7 != nil {
		clear(r.l7.bridges)
	}
}

// publishL7 turns one proxy verdict into an l7 flow for `membrane
// observe`. Called on the request's goroutine: it only reads the published
// view and FlowHub.Publish never blocks.
func (r *reconciler) publishL7(ev proxy.Event) {
	v := r.view.get()
	f := api.Flow{
		Time:           ev.Time,
		Type:           api.FlowL7,
		Verdict:        ev.Verdict,
		Reason:         "l7-" + ev.Verdict,
		Protocol:       "tcp",
		PolicyRevision: v.status.PolicyRevision,
		Source:         r.peer(v, ev.Src.Addr().Unmap().String(), ev.Src.Port(), ev.SrcIdentity),
		Dest:           r.peer(v, ev.Dst.Addr().Unmap().String(), ev.Dst.Port(), ev.DstIdentity),
		HTTP: &api.HTTPInfo{
			Engine: ev.Engine, Proto: ev.Proto, Method: ev.Method, Path: ev.Path, Host: ev.Host,
			Status: ev.Status, Policy: ev.Policy, DurationNS: int64(ev.Duration), Error: ev.Error,
		},
	}
	// Direction and Endpoint say whose rules decided, as for l3 records:
	// the source endpoint's egress or the destination's ingress.
	f.Direction = ev.Direction
	if ev.Reason != "" {
		// Refused before any rule judged it (Docker isolates the ends).
		f.Reason = ev.Reason
	}
	decider := ev.Dst.Addr()
	if ev.Direction == policies.Egress.String() {
		decider = ev.Src.Addr()
	}
	if ev.Direction != "" {
		if ep := v.byAddr[decider.Unmap()]; ep != nil {
			f.Endpoint = ep.ID
		}
	}
	if ev.RuleID > 0 && int(ev.RuleID) <= len(v.rules) {
		if rule := v.rules[ev.RuleID-1]; rule.ID == ev.RuleID {
			f.Rule = &api.RuleRef{ID: rule.ID, Policy: rule.Policy.Name, Block: rule.Block, File: rule.Pos.File, Line: rule.Pos.Line}
		}
	}
	if f.Rule == nil && ev.Policy != "" {
		f.Rule = r.policyRef(v, ev.Policy)
	}
	r.flows.Publish(f)
}

// policyRef names a policy (no single rule: an L7 deny names the policy
// whose rules did not match).
func (r *reconciler) policyRef(v *view, name string) *api.RuleRef {
	for _, rule := range v.rules {
		if rule.Policy != nil && rule.Policy.Name == name {
			return &api.RuleRef{Policy: name, File: rule.Pos.File, Line: rule.Policy.Pos.Line}
		}
	}
	return &api.RuleRef{Policy: name}
}
