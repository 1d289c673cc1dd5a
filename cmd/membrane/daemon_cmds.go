package main

import "github.com/spf13/cobra"

// addDaemonCommands adds the commands that talk to a running membraned
// (status, endpoint, identity, observe, policy show). Owned by the daemon work.
func addDaemonCommands(root, policy *cobra.Command) {}
