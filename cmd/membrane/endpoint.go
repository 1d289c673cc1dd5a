package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/membrane-fw/membrane/daemon/api"
)

func newEndpointCmd() *cobra.Command {
	c := groupCmd("endpoint", "List and inspect managed endpoints")
	var listOut, getOut *string
	list := &cobra.Command{
		Use:   "list",
		Short: "List managed endpoints",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return printAnswer(c, *listOut, (*api.Client).Endpoints, func(w io.Writer, eps []api.Endpoint) error {
				tw := tabwriter.NewWriter(termSafe(w), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tIDENTITY\tCONTAINERS\tADDRESSES\tPOLICIES\tLABELS")
				for _, e := range eps {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.ID, identityText(e), containersText(e.Containers), dash(strings.Join(e.Addresses, ",")), dash(strings.Join(e.Policies, ",")), labelsText(e.Labels))
				}
				return tw.Flush()
			})
		},
	}
	listOut = addOutput(list)
	get := &cobra.Command{
		Use:   "get ID|CONTAINER",
		Short: "Show one endpoint, by endpoint id, container name or container id",
		Args:  oneArg("one endpoint: its id, container name or container id"),
		RunE: func(c *cobra.Command, args []string) error {
			return printAnswer(c, *getOut, func(cl *api.Client, ctx context.Context) (api.Endpoint, error) {
				// The reference is a segment of the API's path: "" and dot
				// segments would name another path, and are no name anyway.
				if args[0] == "" || slices.ContainsFunc(strings.Split(args[0], "/"), func(s string) bool { return s == "." || s == ".." }) {
					return api.Endpoint{}, usageError("%q is not an endpoint id, container name or container id (see `membrane endpoint list`)", args[0])
				}
				return cl.Endpoint(ctx, args[0])
			}, func(w io.Writer, e api.Endpoint) error {
				w = termSafe(w)
				fmt.Fprintf(w, "endpoint:   %d\n", e.ID)
				fmt.Fprintf(w, "identity:   %s\n", identityText(e))
				fmt.Fprintf(w, "containers: %s\n", containersText(e.Containers))
				fmt.Fprintf(w, "addresses:  %s\n", dash(strings.Join(e.Addresses, ", ")))
				var ifs []string
				for _, i := range e.Interfaces {
					f := fmt.Sprintf("%s (%d)", i.Name, i.Ifindex)
					if i.Network != "" {
						f += " on " + i.Network
					}
					if i.NoICC {
						f += " (inter-container communication disabled)"
					}
					ifs = append(ifs, f)
				}
				fmt.Fprintf(w, "interfaces: %s\n", dash(strings.Join(ifs, ", ")))
				fmt.Fprintf(w, "enforcing:  %v\n", e.Enforcing)
				for _, u := range e.Unenforced {
					fmt.Fprintf(w, "unenforced: %s (no program sees this interface; its traffic is not judged)\n", u)
				}
				if e.Stale != "" {
					fmt.Fprintf(w, "stale:      %s (the interfaces and addresses above are the last read; read again until they can be)\n", e.Stale)
				}
				if e.Audit {
					fmt.Fprintf(w, "audit:      true\n")
				}
				fmt.Fprintf(w, "policies:   %s\n", dash(strings.Join(e.Policies, ", ")))
				fmt.Fprintf(w, "labels:\n")
				for _, k := range slices.Sorted(maps.Keys(e.Labels)) {
					fmt.Fprintf(w, "  %s=%s\n", k, e.Labels[k])
				}
				return nil
			})
		},
	}
	getOut = addOutput(get)
	c.AddCommand(list, get)
	return c
}

func identityText(e api.Endpoint) string {
	if e.HostNetwork {
		return fmt.Sprintf("%d (host network)", e.Identity)
	}
	return fmt.Sprint(e.Identity)
}

func containersText(cs []api.Container) string {
	var n []string
	for _, c := range cs {
		n = append(n, c.Name)
	}
	return dash(strings.Join(n, ","))
}

func labelsText(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return dash(strings.Join(parts, ","))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
