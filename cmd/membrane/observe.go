package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/membrane-fw/membrane/daemon/api"
)

func newObserveCmd() *cobra.Command {
	var f api.ObserveFilter
	var out *string
	c := &cobra.Command{
		Use:   "observe [--follow] [--type l3|l7|all] [--verdict V] [--container NAME] [--direction egress|ingress] [-o json]",
		Short: "Show the verdicts: datapath drops, audit records, connections sent to the L7 proxy and sampled allowed flows, and every HTTP request the proxy judged",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := checkOutput(*out); err != nil {
				return err
			}
			if !api.ValidVerdict(f.Verdict) {
				return usageError("--verdict %q: want dropped, audit or allowed (l3), or forwarded, denied or error (l7)", f.Verdict)
			}
			if !api.ValidFlowType(f.Type) {
				return usageError("--type %q: want l3, l7 or all", f.Type)
			}
			if !api.ValidDirection(f.Direction) {
				return usageError("--direction %q: want egress or ingress", f.Direction)
			}
			// A verdict of the other kind of record than --type asks for
			// would select nothing, and print nothing, for ever.
			l3 := f.Verdict == "dropped" || f.Verdict == "audit" || f.Verdict == "allowed"
			if f.Verdict != "" && (f.Type == api.FlowL3 && !l3 || f.Type == api.FlowL7 && l3) {
				return usageError("--verdict %s never goes with --type %s: l3 records are dropped, audit or allowed, l7 records forwarded, denied or error", f.Verdict, f.Type)
			}
			if f.Last < 0 {
				return usageError("--last %d: want a count of records, or 0 for all that are kept", f.Last)
			}
			ctx, cancel := signalContext(c.Context())
			defer cancel()
			w := c.OutOrStdout()
			text := termSafe(w)
			err := client(c).Observe(ctx, f, func(fl api.Flow) error {
				if *out == "json" {
					return printJSONLine(w, fl)
				}
				_, err := fmt.Fprintln(text, flowText(fl))
				return err
			})
			if err != nil {
				return err
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&f.Follow, "follow", "f", false, "keep printing new records")
	c.Flags().StringVar(&f.Type, "type", "all", "which records: l3 (datapath), l7 (HTTP requests the proxy judged) or all")
	c.Flags().StringVar(&f.Verdict, "verdict", "", "only records with this verdict: dropped, audit, allowed (l3); forwarded, denied, error (l7)")
	c.Flags().StringVar(&f.Container, "container", "", "only records with this container at either end: its name, ID, a unique prefix of the ID, or its endpoint number; matched as each record comes, so a container started later is followed")
	c.Flags().StringVar(&f.Direction, "direction", "", "only records judged by this side's rules: egress (the source's) or ingress (the destination's)")
	c.Flags().IntVar(&f.Last, "last", 0, "print at most this many past records (0: all kept)")
	out = addOutput(c)
	return c
}

func printJSONLine(w io.Writer, v any) error {
	return jsonLine(w, v)
}

// flowText is one line per record:
// TIME VERDICT(REASON) DIR PROTO SRC -> DST by POLICY/BLOCK (FILE:LINE)
func flowText(f api.Flow) string {
	if f.Type == api.FlowL7 && f.HTTP != nil {
		return l7Text(f)
	}
	rule := "no rule (" + f.Reason + ")"
	if f.Rule != nil {
		rule = fmt.Sprintf("policy %q %s (%s:%d)", f.Rule.Policy, f.Rule.Block, f.Rule.File, f.Rule.Line)
	}
	return fmt.Sprintf("%s %-7s %-14s %-7s %-4s %s -> %s  %s",
		f.Time.Local().Format(time.TimeOnly+".000"), f.Verdict, f.Reason, f.Direction, f.Protocol,
		peerText(f.Source), peerText(f.Dest), rule)
}

// l7Text is one line per HTTP request:
// TIME VERDICT STATUS l7 [DIR] SRC -> DST METHOD HOST PATH by POLICY/BLOCK (FILE:LINE)
// where DIR, when known, says whose rules decided (the source's egress or
// the destination's ingress).
func l7Text(f api.Flow) string {
	h := f.HTTP
	rule := "no rule"
	switch {
	case f.Rule != nil && f.Rule.Block != "":
		rule = fmt.Sprintf("policy %q %s (%s:%d)", f.Rule.Policy, f.Rule.Block, f.Rule.File, f.Rule.Line)
	case f.Rule != nil:
		rule = fmt.Sprintf("policy %q (%s:%d)", f.Rule.Policy, f.Rule.File, f.Rule.Line)
	case h.Policy != "":
		rule = fmt.Sprintf("policy %q", h.Policy)
	case f.Reason != "" && !strings.HasPrefix(f.Reason, "l7-"):
		// Refused before any rule (docker-isolation, ...).
		rule = "no rule (" + f.Reason + ")"
	}
	kind := "l7"
	if f.Direction != "" {
		kind += " " + f.Direction
	}
	s := fmt.Sprintf("%s %-9s %d %s %s -> %s  %s %s %s  %s",
		f.Time.Local().Format(time.TimeOnly+".000"), f.Verdict, h.Status, kind,
		peerText(f.Source), peerText(f.Dest), h.Method, h.Host, h.Path, rule)
	if h.Error != "" {
		s += "  error: " + h.Error
	}
	return s
}

func peerText(p api.Peer) string {
	addr := p.IP
	if p.Port != 0 {
		if strings.Contains(addr, ":") {
			addr = "[" + addr + "]"
		}
		addr = fmt.Sprintf("%s:%d", addr, p.Port)
	}
	who := fmt.Sprint(p.Identity)
	if p.Container != "" {
		who = p.Container + "/" + who
	} else if r := p.Labels["reserved"]; r != "" {
		who = r
	} else if c := p.Labels["cidr"]; c != "" {
		who = "cidr " + c
	}
	var l []string
	for k, v := range p.Labels {
		if k != "reserved" && k != "cidr" {
			l = append(l, k+"="+v)
		}
	}
	sort.Strings(l)
	if len(l) > 0 {
		who += "{" + strings.Join(l, ",") + "}"
	}
	return addr + " (" + who + ")"
}
