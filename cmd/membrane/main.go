// Command membrane is Membrane's command line: offline policy tools (check,
// trace) and the client of a running membraned's local API.
package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/agext/levenshtein"
	"github.com/membrane-fw/membrane/policies"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// exitError carries a process exit code through cobra's error return.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// usageError marks an error as a usage error (exit 2).
func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

// silentExit ends the command with code, having printed what it had to.
func silentExit(code int) error { return &exitError{code: code} }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "membrane",
		Short:         "Identity-aware eBPF firewall for Docker, Compose, containerd and Nomad hosts",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		err = flagValueInWords(err)
		if s := suggestFlag(c, err); s != "" {
			return &exitError{code: 2, err: fmt.Errorf("%w; did you mean %s?\nSee '%s --help'.", err, s, c.CommandPath())}
		}
		return &exitError{code: 2, err: fmt.Errorf("%w\nSee '%s --help'.", err, c.CommandPath())}
	})
	policy := groupCmd("policy", "Check, trace and show policies")
	policy.AddCommand(newPolicyCheckCmd(), newPolicyTraceCmd())
	root.AddCommand(policy, newVersionCmd())
	addDaemonCommands(root, policy)
	// The root, cobra's completion command and its help command hold
	// subcommands (or topics) as the groups do: an argument that names
	// none is a usage error, told the same way, not a help page and exit
	// 0 (completion) or cobra's own layout (the root).
	root.Args, root.RunE = cobra.ArbitraryArgs, groupRunE
	root.SuggestionsMinimumDistance = 2
	root.DisableFlagsInUseLine = true
	root.InitDefaultCompletionCmd()
	if comp, _, err := root.Find([]string{"completion"}); err == nil && comp != root {
		comp.Args, comp.RunE = cobra.ArbitraryArgs, groupRunE
		comp.DisableFlagsInUseLine = true
	}
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		Args:  cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := c.Root().Find(args)
			if err != nil || cmd == nil || len(rest) > 0 {
				return usageError("unknown help topic %q\nSee '%s --help'.", strings.Join(args, " "), c.Root().CommandPath())
			}
			return cmd.Help()
		},
	})
	return root
}

// strconvInFlagError is the strconv error pflag puts after a flag value
// of the wrong type: the function, the value, and what went wrong.
var strconvInFlagError = regexp.MustCompile(`strconv\.Parse(\w+): parsing "(?:[^"\\]|\\.)*": (invalid syntax|value out of range)`)

// flagValueInWords says in words what strconv says in an error of pflag
// about a flag's value: "want a whole number", "out of range".
func flagValueInWords(err error) error {
	msg := err.Error()
	m := strconvInFlagError.FindStringSubmatch(msg)
	if m == nil {
		return err
	}
	words := "out of range"
	if m[2] == "invalid syntax" {
		switch m[1] {
		case "Bool":
			words = "want true or false"
		case "Float":
			words = "want a number"
		default:
			words = "want a whole number"
		}
	}
	return errors.New(strings.Replace(msg, m[0], words, 1))
}

// groupCmd is a command that only holds subcommands. Cobra prints the help
// of such a command and succeeds whatever follows it, so `membrane policy
// chek` would exit 0; here an argument that names no subcommand is a usage
// error (exit 2), as an unknown top-level command is.
func groupCmd(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		// The usage line stays "membrane policy [command]" alone.
		DisableFlagsInUseLine:      true,
		SuggestionsMinimumDistance: 2,
		RunE:                       groupRunE,
	}
}

// groupRunE runs a command that only holds subcommands: its help without
// an argument, else a usage error for the subcommand it does not have.
func groupRunE(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return c.Help()
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return usageError("%s\nSee '%s --help'.", msg, c.CommandPath())
}

// noArgs is cobra.NoArgs with a message that says what is wrong: cobra's
// "unknown command" reads as a misspelt subcommand of a command that has
// none.
func noArgs(c *cobra.Command, args []string) error {
	return noArgsHint("")(c, args)
}

// noArgsHint is noArgs, with hint (a likely cause) after the message.
func noArgsHint(hint string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		why := ""
		if hint != "" {
			why = " (" + hint + ")"
		}
		return usageError("%q takes no arguments, got %q%s\nSee '%s --help'.", c.CommandPath(), args[0], why, c.CommandPath())
	}
}

// oneArg is cobra.ExactArgs(1) with a message that names the argument
// (what) rather than "accepts 1 arg(s), received 0".
func oneArg(what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) == 1 {
			return nil
		}
		got := "none"
		if len(args) > 1 {
			q := make([]string, len(args))
			for i, a := range args {
				q[i] = strconv.Quote(a)
			}
			got = fmt.Sprintf("%d: %s", len(args), strings.Join(q, " "))
		}
		return usageError("%q takes %s (got %s)\nSee '%s --help'.", c.CommandPath(), what, got, c.CommandPath())
	}
}

// exitCode is the process exit code for what Execute returned: 0 on
// success, the code an exitError carries, 2 for cobra's usage errors, else 1.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if isUsage(err) {
		return 2
	}
	return 1
}

func main() {
	err := newRootCmd().Execute()
	if err == nil {
		return
	}
	var ee *exitError
	if !errors.As(err, &ee) || ee.err != nil {
		fmt.Fprintln(os.Stderr, "membrane:", err)
	}
	os.Exit(exitCode(err))
}

// suggestFlag is the flag of c that an unknown flag in err was most likely
// meant to be ("" when none is close): one within two edits of it, or
// --format for --output and the other way round, since the offline
// commands (policy check, trace) take --format as the CLI contract names
// it and the daemon's commands -o/--output.
func suggestFlag(c *cobra.Command, err error) string {
	msg := err.Error()
	var name string
	switch {
	case strings.HasPrefix(msg, "unknown flag: --"):
		name, _, _ = strings.Cut(strings.TrimPrefix(msg, "unknown flag: --"), "=")
	case strings.HasPrefix(msg, "unknown shorthand flag: 'o'"):
		name = "output"
	default:
		return ""
	}
	var flags []string
	visit := func(f *pflag.Flag) {
		if !f.Hidden {
			flags = append(flags, f.Name)
		}
	}
	c.Flags().VisitAll(visit)
	c.InheritedFlags().VisitAll(visit)
	for _, pair := range [][2]string{{"output", "format"}, {"format", "output"}} {
		if name == pair[0] && slices.Contains(flags, pair[1]) {
			if pair[1] == "output" {
				return "--output (-o)"
			}
			return "--" + pair[1]
		}
	}
	var best []string
	bestDist := 3
	for _, f := range flags {
		if policies.OtherFamily(name, f) {
			continue
		}
		switch d := levenshtein.Distance(name, f, nil); {
		case d < bestDist:
			best, bestDist = []string{"--" + f}, d
		case d == bestDist && len(best) > 0 && !slices.Contains(best, "--"+f):
			best = append(best, "--"+f)
		}
	}
	return strings.Join(best, " or ")
}
