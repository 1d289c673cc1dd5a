package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/policies"
)

// addDaemonCommands adds the commands that talk to a running membraned
// (status, endpoint, identity, observe, policy show/reload) and the
// --socket flag they share.
func addDaemonCommands(root, policy *cobra.Command) {
	root.PersistentFlags().String("socket", "", "membraned's API socket (env MEMBRANE_SOCKET; default "+api.DefaultSocket+")")
	root.AddCommand(newStatusCmd(), newEndpointCmd(), newIdentityCmd(), newObserveCmd())
	policy.AddCommand(newPolicyShowCmd(), newPolicyReloadCmd())
}

// traceLive is `membrane policy trace --live`: the daemon evaluates the
// connection against its enforced set, endpoints and host addresses.
func traceLive(c *cobra.Command, q traceQuery) (policies.Result, error) {
	r, err := client(c).Trace(c.Context(), api.TraceRequest(q))
	if err != nil {
		return policies.Result{}, err
	}
	var res policies.Result
	if err := json.Unmarshal(r.Result, &res); err != nil {
		return policies.Result{}, fmt.Errorf("reading membraned's trace: %w", err)
	}
	return res, nil
}

// client returns the API client for the socket named by --socket,
// MEMBRANE_SOCKET or the default, in that order.
func client(c *cobra.Command) *api.Client {
	sock, _ := c.Flags().GetString("socket")
	if sock == "" {
		sock = os.Getenv("MEMBRANE_SOCKET")
	}
	if sock == "" {
		sock = api.DefaultSocket
	}
	return api.NewClient(sock)
}

// addOutput adds -o/--output text|json.
func addOutput(c *cobra.Command) *string {
	return c.Flags().StringP("output", "o", "text", "output format: text or json")
}

func checkOutput(o string) error {
	if o != "text" && o != "json" {
		return usageError("--output %q: want text or json", o)
	}
	return nil
}

// printAnswer runs a command that reads one answer from membraned: it
// checks -o, asks, and prints the answer as JSON or as text does.
func printAnswer[T any](c *cobra.Command, out string, ask func(*api.Client, context.Context) (T, error), text func(w io.Writer, v T) error) error {
	if err := checkOutput(out); err != nil {
		return err
	}
	v, err := ask(client(c), c.Context())
	if err != nil {
		return err
	}
	if out == "json" {
		return printJSON(c.OutOrStdout(), v)
	}
	return text(c.OutOrStdout(), v)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// signalContext is cancelled on SIGINT/SIGTERM (observe --follow).
func signalContext(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
}
