package daemon

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/membrane-fw/membrane/bpf"
	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/policies"
)

// readEvents turns the datapath's ring-buffer records into flows for
// `membrane observe`. It only reads the published view.
func (r *reconciler) readEvents(ctx context.Context) error {
	rd, err := r.dp.NewEventReader()
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	for {
		ev, err := rd.Read()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
				return nil
			}
			r.log.Warn("reading flow events", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		r.flows.Publish(r.flowOf(ev))
	}
}

func (r *reconciler) flowOf(ev bpf.Event) api.Flow {
	v := r.view.get()
	f := api.Flow{
		Time:      ev.Time,
		Type:      api.FlowL3,
		Reason:    ev.Reason.String(),
		Direction: ev.Direction.String(),
		Protocol:  ev.Proto.String(),
		Endpoint:  ev.EndpointID,
		Bytes:     int(ev.Len),
	}
	switch ev.Type {
	case bpf.EventDrop:
		f.Verdict = "dropped"
	case bpf.EventAudit:
		f.Verdict = "audit"
	default:
		f.Verdict = "allowed"
	}
	f.PolicyRevision = v.status.PolicyRevision
	local, remote := ev.LocalIdentity, ev.RemoteIdentity
	srcID, dstID := remote, local
	if ev.Direction == policies.Egress {
		srcID, dstID = local, remote
	}
	f.Source = r.peer(v, ev.Src.Addr().String(), ev.Src.Port(), srcID)
	f.Dest = r.peer(v, ev.Dst.Addr().String(), ev.Dst.Port(), dstID)
	// The local end is the veth's endpoint even before its address is known.
	if ep := v.byIfindex[ev.Ifindex]; ep != nil && len(ep.Containers) > 0 {
		if ev.Direction == policies.Egress {
			setEndpoint(&f.Source, ep)
		} else {
			setEndpoint(&f.Dest, ep)
		}
	}
	if ev.RuleID > 0 && int(ev.RuleID) <= len(v.rules) {
		rule := v.rules[ev.RuleID-1]
		if rule.ID == ev.RuleID {
			f.Rule = &api.RuleRef{ID: rule.ID, Policy: rule.Policy.Name, Block: rule.Block, File: rule.Pos.File, Line: rule.Pos.Line}
		}
	}
	return f
}

func (r *reconciler) peer(v *view, ip string, port uint16, id policies.Identity) api.Peer {
	p := api.Peer{IP: ip, Port: port, Identity: uint32(id)}
	if l, ok := v.labels[id]; ok {
		p.Labels = l
	} else if c, ok := v.cidrs[id]; ok {
		p.Labels = map[string]string{"cidr": c.String()}
	} else {
		for _, res := range reservedNames {
			if res.id == id {
				p.Labels = map[string]string{"reserved": res.name}
			}
		}
	}
	if a, err := parseAddr(ip); err == nil {
		if ep := v.byAddr[a]; ep != nil && len(ep.Containers) > 0 {
			setEndpoint(&p, ep)
		}
	}
	return p
}

// setEndpoint makes ep's first container the end's container, and keeps
// ep's number and containers for `observe --container` to match then, not
// when the stream began. The slice is the view's, which no one changes.
func setEndpoint(p *api.Peer, ep *api.Endpoint) {
	p.Container = ep.Containers[0].Name
	p.EndpointID = ep.ID
	p.Containers = ep.Containers
}
