package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/membrane-fw/membrane/daemon/api"
)

func newIdentityCmd() *cobra.Command {
	c := groupCmd("identity", "List security identities")
	var out *string
	list := &cobra.Command{
		Use:   "list",
		Short: "List reserved and allocated identities",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return printAnswer(c, *out, (*api.Client).Identities, func(w io.Writer, ids []api.Identity) error {
				tw := tabwriter.NewWriter(termSafe(w), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "IDENTITY\tENDPOINTS\tLABELS")
				for _, id := range ids {
					labels := labelsText(id.Labels)
					if id.Reserved != "" {
						labels = "reserved:" + id.Reserved
					}
					fmt.Fprintf(tw, "%d\t%d\t%s\n", id.ID, id.Endpoints, labels)
				}
				return tw.Flush()
			})
		},
	}
	out = addOutput(list)
	c.AddCommand(list)
	return c
}
