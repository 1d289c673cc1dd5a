package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newIdentityCmd() *cobra.Command {
	c := groupCmd("identity", "List security identities")
	var out *string
	list := &cobra.Command{
		Use:   "list",
		Short: "List reserved and allocated identities",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := checkOutput(*out); err != nil {
				return err
			}
			ids, err := client(c).Identities(c.Context())
			if err != nil {
				return err
			}
			if *out == "json" {
				return printJSON(c.OutOrStdout(), ids)
			}
			tw := tabwriter.NewWriter(termSafe(c.OutOrStdout()), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IDENTITY\tENDPOINTS\tLABELS")
			for _, id := range ids {
				labels := labelsText(id.Labels)
				if id.Reserved != "" {
					labels = "reserved:" + id.Reserved
				}
				fmt.Fprintf(tw, "%d\t%d\t%s\n", id.ID, id.Endpoints, labels)
			}
			return tw.Flush()
		},
	}
	out = addOutput(list)
	c.AddCommand(list)
	return c
}
