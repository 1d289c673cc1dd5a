package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/runtime/endpoint"
)

// backend serves the API from the reconciler's published view; writes go
// to the reconciler as requests.
type backend struct{ r *reconciler }

var reservedNames = []struct {
	id   policies.Identity
	name string
}{
	{policies.IdentityUnknown, "unknown"}, {policies.IdentityHost, "host"}, {policies.IdentityWorld, "world"},
	{policies.IdentityUnmanaged, "unmanaged"}, {policies.IdentityInit, "init"},
}

func parseAddr(s string) (netip.Addr, error) { return netip.ParseAddr(s) }

// Status is the published status, with the L7 engine's problems as they
// are now (an Envoy that exits or rejects its configuration does so
// between reconciles).
func (b *backend) Status() api.Status {
	st := b.r.view.get().status
	if ps := b.r.l7Problems(); len(ps) > 0 {
		st.Errors = append(slices.Clip(st.Errors), ps...)
	}
	return st
}

func (b *backend) Endpoints() []api.Endpoint {
	v := b.r.view.get()
	v.selected()
	return v.endpoints
}

func (b *backend) Identities() []api.Identity { return b.r.view.get().identities }

func (b *backend) Policy() api.Policy {
	v := b.r.view.get()
	v.selected()
	return v.policy
}

func (b *backend) Endpoint(ref string) (api.Endpoint, bool) {
	v := b.r.view.get()
	v.selected()
	ep := findEndpoint(v, ref, true)
	if ep == nil {
		return api.Endpoint{}, false
	}
	return *ep, true
}

// findEndpoint resolves a container name or id, an endpoint id (when
// byID; `endpoint get` takes them, a trace's --from-container does not), or
// a unique container id prefix (as docker accepts). A container's exact name
// or id comes first: Docker names such as "09" or "12" read as numbers, and
// taking them for an endpoint id would answer for another container. An
// endpoint id is its decimal form only ("9", never "09").
func findEndpoint(v *view, ref string, byID bool) *api.Endpoint {
	ep, _ := lookupEndpoint(v, ref, byID)
	return ep
}

// lookupEndpoint is findEndpoint, and says whether ref was a container id
// prefix of more than one endpoint's containers.
func lookupEndpoint(v *view, ref string, byID bool) (*api.Endpoint, bool) {
	ref = strings.TrimPrefix(ref, "/")
	var prefix *api.Endpoint
	ambiguous := false
	for i := range v.endpoints {
		e := &v.endpoints[i]
		for _, c := range e.Containers {
			if c.Name == ref || c.ID == ref {
				return e, false
			}
			if len(ref) >= 4 && strings.HasPrefix(c.ID, ref) {
				if prefix != nil && prefix != e {
					ambiguous = true
				}
				prefix = e
			}
		}
	}
	if n, err := strconv.ParseUint(ref, 10, 32); byID && err == nil && strconv.FormatUint(n, 10) == ref {
		for i := range v.endpoints {
			if v.endpoints[i].ID == uint32(n) {
				return &v.endpoints[i], false
			}
		}
	}
	if ambiguous {
		return nil, true
	}
	return prefix, false
}

func (b *backend) Flows(ctx context.Context, follow bool) ([]api.Flow, <-chan api.Flow) {
	return b.r.flows.Flows(ctx, follow)
}

func (b *backend) ReloadPolicies(ctx context.Context) error {
	var perr *api.PolicyError
	err := b.r.do(ctx, func(context.Context) error {
		b.r.loadPolicies(time.Now())
		perr = b.r.policyErr
		return nil
	})
	if err != nil {
		return err
	}
	if perr != nil {
		var lines []string
		for _, d := range perr.Diagnostics {
			lines = append(lines, d.String())
		}
		return &api.BadRequestError{Err: fmt.Errorf("%s\n%s", perr.Message, strings.Join(lines, "\n"))}
	}
	return nil
}

func (b *backend) Resync(ctx context.Context) error {
	return b.r.do(ctx, func(context.Context) error {
		b.r.fullSync("api")
		return nil
	})
}

// Trace evaluates one connection with the reference evaluator against the
// live state: the enforced set, the current endpoints and host addresses.
func (b *backend) Trace(ctx context.Context, req api.TraceRequest) (api.TraceResult, error) {
	v := b.r.view.get()
	if v.set == nil {
		return api.TraceResult{}, fmt.Errorf("no valid policy set is loaded (see `membrane status`)")
	}
	// Labels given for an end count as an endpoint's do: only those that
	// the config's label filter leaves to identity and selection.
	from, fromPeer, err := tracePeer(v, "from", req.FromContainer, b.identityLabels(req.FromLabels), req.FromEntity, req.FromIP)
	if err != nil {
		return api.TraceResult{}, err
	}
	to, toPeer, err := tracePeer(v, "to", req.ToContainer, b.identityLabels(req.ToLabels), req.ToEntity, req.ToIP)
	if err != nil {
		return api.TraceResult{}, err
	}
	conn := policies.Connection{From: from, To: to, Port: req.Port}
	switch strings.ToLower(req.Proto) {
	case "", "any":
		conn.Proto = policies.ProtoAny
	case "tcp":
		conn.Proto = policies.ProtoTCP
	case "udp":
		conn.Proto = policies.ProtoUDP
	case "sctp":
		conn.Proto = policies.ProtoSCTP
	case "icmp":
		conn.Proto = policies.ProtoICMP
	case "icmpv6":
		conn.Proto = policies.ProtoICMPv6
	default:
		return api.TraceResult{}, &api.BadRequestError{Err: fmt.Errorf("protocol %q: want tcp, udp, sctp, icmp or icmpv6", req.Proto)}
	}
	if why := traceShape(conn.Proto, req); why != "" {
		return api.TraceResult{}, &api.BadRequestError{Err: errors.New(why)}
	}
	if req.ICMPType != nil {
		conn.ICMPType = *req.ICMPType
	}
	if req.HTTPMethod != "" || req.HTTPPath != "" {
		conn.HTTP = &policies.HTTPRequest{Method: req.HTTPMethod, Path: req.HTTPPath, Host: req.HTTPHost, Headers: req.HTTPHeaders}
	}
	env := v.env
	res := v.set.Evaluate(&env, conn)
	if why := dockerIsolation(v.networks, traceAddrs(v, req.FromContainer, req.FromIP), traceAddrs(v, req.ToContainer, req.ToIP)); why != "" {
		res.SetDockerIsolation(conn, why, proxy.IsolationText(why), (&proxy.IsolatedError{Reason: why}).Error())
	}
	raw, err := json.Marshal(res)
	if err != nil {
		return api.TraceResult{}, err
	}
	var text strings.Builder
	_ = res.WriteText(&text)
	return api.TraceResult{From: fromPeer, To: toPeer, Result: raw, Text: text.String()}, nil
}

// traceShape says why req names no connection there can be, as the CLI's
// flags would not let it ("" when it can be): a port takes tcp, udp or
// sctp, an ICMP type icmp or icmpv6, and an HTTP request a method, a path
// and TCP.
func traceShape(proto policies.Proto, req api.TraceRequest) string {
	switch proto {
	case policies.ProtoTCP, policies.ProtoUDP, policies.ProtoSCTP:
		if req.Port == 0 {
			return fmt.Sprintf("protocol %s needs a port 1-65535", req.Proto)
		}
		if req.ICMPType != nil {
			return fmt.Sprintf("protocol %s has no ICMP type", req.Proto)
		}
	case policies.ProtoICMP, policies.ProtoICMPv6:
		if req.Port != 0 {
			return fmt.Sprintf("protocol %s has no port", req.Proto)
		}
		if req.ICMPType == nil {
			return fmt.Sprintf("protocol %s needs icmp_type", req.Proto)
		}
	default:
		if req.Port != 0 || req.ICMPType != nil {
			return "a port or an ICMP type needs its protocol (proto)"
		}
	}
	if req.HTTPMethod != "" || req.HTTPPath != "" || req.HTTPHost != "" || len(req.HTTPHeaders) > 0 {
		if req.HTTPMethod == "" || req.HTTPPath == "" {
			return "an HTTP request needs http_method and http_path"
		}
		if proto != policies.ProtoTCP {
			return "an HTTP request needs a TCP connection (proto tcp)"
		}
	}
	return ""
}

// identityLabels is what the daemon makes of an endpoint's labels: the
// derived labels added, then the identity-relevant part (nil stays nil:
// the end is not named by labels).
func (b *backend) identityLabels(labels map[string]string) map[string]string {
	if labels == nil {
		return nil
	}
	return endpoint.IdentityLabels(endpoint.DeriveLabels(maps.Clone(labels), "", ""), b.r.filter)
}

// traceAddrs are the addresses of a trace's end when it is named by
// container (all of its addresses) or by IP; nil for labels and entities,
// which name no particular container, so Docker's networks cannot be
// judged for them.
func traceAddrs(v *view, container, ip string) []netip.Addr {
	switch {
	case container != "":
		ep := findEndpoint(v, container, false)
		if ep == nil || ep.HostNetwork {
			return nil
		}
		var out []netip.Addr
		for _, s := range ep.Addresses {
			if a, err := netip.ParseAddr(s); err == nil {
				out = append(out, a)
			}
		}
		return out
	case ip != "":
		if a, err := netip.ParseAddr(ip); err == nil {
			return []netip.Addr{a}
		}
	}
	return nil
}

// dockerIsolation is why Docker keeps a client at src from a destination
// at dst (proxy.Networks.Reachable), "" when it does not or it cannot be
// told. A destination container with several addresses is isolated only
// when every one of them is: a client reaches it by the address on a
// network they share (Docker's DNS gives no other). The client's addresses
// all belong to one endpoint, so any one of them will do. Sharing only
// networks without ICC is the more telling reason when the destination is
// on several.
func dockerIsolation(n *proxy.Networks, src, dst []netip.Addr) string {
	if n == nil || len(src) == 0 || len(dst) == 0 {
		return ""
	}
	why := ""
	for _, d := range dst {
		ok, r := n.Reachable(src[0], d)
		if ok {
			return ""
		}
		if why == "" || r == proxy.ReasonNoICC {
			why = r
		}
	}
	return why
}

func tracePeer(v *view, side, container string, labels map[string]string, entity, ip string) (policies.Peer, api.Peer, error) {
	n := 0
	for _, s := range []bool{container != "", labels != nil, entity != "", ip != ""} {
		if s {
			n++
		}
	}
	if n != 1 {
		return policies.Peer{}, api.Peer{}, &api.BadRequestError{Err: fmt.Errorf("name the %s end exactly one way: container, labels, entity or ip", side)}
	}
	switch {
	case container != "":
		ep, ambiguous := lookupEndpoint(v, container, false)
		if ambiguous {
			return policies.Peer{}, api.Peer{}, fmt.Errorf("%s container %q: more than one container's ID starts with it; give more of the ID, or the name: %w", side, container, api.ErrNotFound)
		}
		if ep == nil {
			return policies.Peer{}, api.Peer{}, fmt.Errorf("%s container %q is not a managed endpoint (see `membrane endpoint list`): %w", side, container, api.ErrNotFound)
		}
		ap := api.Peer{Identity: ep.Identity, Container: container}
		if len(ep.Addresses) > 0 {
			ap.IP = ep.Addresses[0]
		}
		if ep.HostNetwork {
			return policies.Peer{Entity: policies.EntityHost}, ap, nil
		}
		if v.judgedInit[ep.ID] {
			// As the datapath judges it, and its peers' ipcache maps it.
			ap.Identity = uint32(policies.IdentityInit)
			return policies.Peer{Entity: policies.EntityInit}, ap, nil
		}
		l := v.labels[policies.Identity(ep.Identity)]
		ap.Labels = l
		return policies.Peer{Labels: l}, ap, nil
	case labels != nil:
		return policies.Peer{Labels: labels}, api.Peer{Labels: labels}, nil
	case entity != "":
		e := policies.Entity(entity)
		switch e {
		case policies.EntityHost, policies.EntityWorld, policies.EntityInit:
		default:
			return policies.Peer{}, api.Peer{}, &api.BadRequestError{Err: fmt.Errorf("%s entity %q: want host, world or init%s", side, entity, policies.SuggestPeerEntity(entity))}
		}
		return policies.Peer{Entity: e}, api.Peer{}, nil
	default:
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return policies.Peer{}, api.Peer{}, &api.BadRequestError{Err: fmt.Errorf("%s ip: %w", side, err)}
		}
		return policies.Peer{IP: a}, api.Peer{IP: a.String()}, nil
	}
}
