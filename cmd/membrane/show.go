package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/membrane-fw/membrane/daemon/api"
)

func newPolicyShowCmd() *cobra.Command {
	var out *string
	c := &cobra.Command{
		Use:   "show",
		Short: "Show the policy set the running membraned enforces",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return printAnswer(c, *out, (*api.Client).Policy, func(w io.Writer, p api.Policy) error {
				w = termSafe(w)
				fmt.Fprintf(w, "revision %d from %s", p.Revision, p.Dir)
				if !p.LoadedAt.IsZero() {
					fmt.Fprintf(w, ", loaded %s", p.LoadedAt.Local().Format(time.DateTime))
				}
				fmt.Fprintln(w)
				if p.LastPolicyError != nil {
					fmt.Fprintf(w, "last change rejected: %s\n", p.LastPolicyError.Message)
					for _, d := range p.LastPolicyError.Diagnostics {
						fmt.Fprintf(w, "  %s\n", d)
					}
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "POLICY\tSELECTOR\tRULES\tENDPOINTS\tFILE")
				for _, ps := range p.Policies {
					var eps []string
					for _, e := range ps.Endpoints {
						eps = append(eps, fmt.Sprint(e))
					}
					sel := ps.Selector
					if sel == "" {
						sel = `""`
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s:%d\n", ps.Name, sel, ps.Rules, dash(strings.Join(eps, ",")), ps.File, ps.Line)
				}
				return tw.Flush()
			})
		},
	}
	out = addOutput(c)
	return c
}

func newPolicyReloadCmd() *cobra.Command {
	var out *string
	c := &cobra.Command{
		Use:   "reload",
		Short: "Make membraned re-read its policy directory now (root or group membrane)",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return printAnswer(c, *out, (*api.Client).ReloadPolicies, func(w io.Writer, p api.Policy) error {
				fmt.Fprintf(w, "policy set revision %d enforced (%d policies)\n", p.Revision, len(p.Policies))
				return nil
			})
		},
	}
	out = addOutput(c)
	return c
}
