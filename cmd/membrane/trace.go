package main

import "github.com/spf13/cobra"

// newPolicyTraceCmd: `membrane policy trace` (owned by the evaluator work).
func newPolicyTraceCmd() *cobra.Command {
	return &cobra.Command{Use: "trace", Short: "Evaluate policies for one connection",
		RunE: func(*cobra.Command, []string) error { return usageError("policy trace is not built yet") }}
}
