package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func newStatusCmd() *cobra.Command {
	var out *string
	c := &cobra.Command{
		Use:   "status",
		Short: "Show membraned's state (exit 0 only when it is up and has reconciled)",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := checkOutput(*out); err != nil {
				return err
			}
			st, err := client(c).Status(c.Context())
			if err != nil {
				if *out == "json" {
					printJSON(c.OutOrStdout(), map[string]any{"up": false, "reconciled": false, "error": err.Error()})
				}
				return err
			}
			w := c.OutOrStdout()
			if *out == "json" {
				if err := printJSON(w, st); err != nil {
					return err
				}
			} else {
				w := termSafe(w)
				state := "up, reconciled"
				if !st.Reconciled {
					state = "up, first reconcile not finished"
				}
				fmt.Fprintf(w, "membraned %s: %s (since %s)\n", st.Version, state, st.StartedAt.Local().Format(time.DateTime))
				fmt.Fprintf(w, "endpoints:   %d\n", st.Endpoints)
				fmt.Fprintf(w, "identities:  %d\n", st.Identities)
				fmt.Fprintf(w, "policies:    %d (%d rules) from %s, revision %d\n", st.Policies, st.Rules, st.PolicyDir, st.PolicyRevision)
				mode := st.Enforcement
				if st.Audit {
					mode += ", audit"
				}
				fmt.Fprintf(w, "enforcement: %s\n", mode)
				if st.L7Engine != "" {
					fmt.Fprintf(w, "l7 proxy:    %s on port %d\n", st.L7Engine, st.L7Port)
				} else {
					fmt.Fprintf(w, "l7 proxy:    not running\n")
				}
				if st.LastPolicyError != nil {
					fmt.Fprintf(w, "policy error: %s (%s)\n", st.LastPolicyError.Message, st.LastPolicyError.Time.Local().Format(time.DateTime))
					for _, d := range st.LastPolicyError.Diagnostics {
						fmt.Fprintf(w, "  %s\n", d)
					}
				}
				if len(st.Errors) > 0 {
					fmt.Fprintf(w, "problems:\n  %s\n", strings.Join(st.Errors, "\n  "))
				}
			}
			if !st.Reconciled {
				return silentExit(1)
			}
			return nil
		},
	}
	out = addOutput(c)
	return c
}
