package main

import "github.com/spf13/cobra"

// newPolicyCheckCmd: `membrane policy check` (owned by the policy-language work).
func newPolicyCheckCmd() *cobra.Command {
	return &cobra.Command{Use: "check [--format text|json] PATH...", Short: "Validate policy files",
		RunE: func(*cobra.Command, []string) error { return usageError("policy check is not built yet") }}
}
