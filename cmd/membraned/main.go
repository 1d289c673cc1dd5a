// Command membraned is Membrane's daemon: it gives every container a
// security identity from its labels and enforces the policies of its
// policy directory with eBPF on the containers' veths.
//
//	membraned [--config PATH]            run (systemd: Type=notify)
//	membraned --config PATH --cleanup    remove every pin and attachment, every
//	                                     Membrane program left on an interface,
//	                                     and the L7 proxy's policy routing,
//	                                     nftables table and Envoy run directory
//	                                     (with the defaults, but a bpffs_dir PATH
//	                                     still names, when PATH cannot be read)
//	membraned --check-config [--config PATH]
//
// Flags are spelled --name in the usage, the docs and membraned(8) (made
// from --help, which prints on standard output); -name, Go's spelling,
// is taken as well, as it always was.
//
// Exit codes: 0 stopped by a signal (or --cleanup done); 1 error (an
// invalid config is printed FILE:LINE:COL: error: ...); 2 usage error
// (an empty --config but with --cleanup, or more than one of --cleanup, --check-config and
// --version among them).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"syscall"

	"github.com/membrane-fw/membrane/daemon"
	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/internal/version"
)

func main() {
	// Signal handling starts before anything slow: a SIGTERM during start-up
	// cancels the start cleanly.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("membraned", flag.ContinueOnError)
	// The flag package's own messages spell flags with one dash; run
	// prints its errors and usage itself, with two (as the docs and
	// membraned(8), which is made from --help, do). Both spellings parse.
	fs.SetOutput(io.Discard)
	cfgPath := fs.String("config", config.DefaultPath, "configuration file (HCL)")
	cleanup := fs.Bool("cleanup", false, "remove every pinned map, program and attachment, every Membrane program left on an interface and the L7 proxy's routing, then exit (package removal)")
	check := fs.Bool("check-config", false, "validate the configuration and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: membraned [--config PATH] [--cleanup | --check-config | --version] [--log-format text|json]\n\n")
		printFlags(w, fs, map[string]string{"config": "PATH", "log-format": "FORMAT"})
	}
	// Parse would print it on every error; run decides where and when.
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			// Asked for: the result, on standard output.
			usage(stdout)
			return 0
		}
		fmt.Fprintf(stderr, "membraned: %s\n", twoDashes(err.Error()))
		usage(stderr)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "membraned: unexpected argument %q\n", fs.Arg(0))
		usage(stderr)
		return 2
	}
	// The modes exclude each other (the usage line says so): with two,
	// one would be done and the other dropped without a word, and
	// --cleanup --check-config on an invalid file would say "valid".
	modes := 0
	for _, on := range []bool{*cleanup, *check, *showVersion} {
		if on {
			modes++
		}
	}
	if modes > 1 {
		fmt.Fprintln(stderr, "membraned: give at most one of --cleanup, --check-config and --version")
		usage(stderr)
		return 2
	}
	// A usage error whatever the mode (membraned(8), EXIT STATUS).
	if *logFormat != "text" && *logFormat != "json" {
		fmt.Fprintf(stderr, "membraned: --log-format %q: want text or json\n", *logFormat)
		return 2
	}
	// Not for --cleanup: a package removal takes the datapath down
	// whatever its command line (below, with the defaults).
	if *cfgPath == "" && !*cleanup {
		fmt.Fprintf(stderr, "membraned: --config \"\": want the path of membrane.hcl (default %s)\n", config.DefaultPath)
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "membraned", version.Version)
		return 0
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "config" {
			explicit = true
		}
	})
	cfg, err := config.Load(*cfgPath, explicit)
	if err != nil && *cleanup {
		// The package's removal runs --cleanup: a configuration that cannot
		// be read must not leave the datapath enforcing with no daemon.
		// Salvage keeps the file's bpffs_dir where it is still readable.
		fmt.Fprintln(stderr, err)
		cfg = config.Salvage(*cfgPath)
		fmt.Fprintf(stderr, "membraned: cannot read the configuration; cleaning up %s, and every Membrane program on an interface\n", cfg.BPFFSDir)
	} else if err != nil {
		fmt.Fprintln(stderr, err)
		if *check {
			fmt.Fprintf(stderr, "membraned: invalid configuration\n")
		} else {
			fmt.Fprintf(stderr, "membraned: invalid configuration; not starting\n")
		}
		return 1
	}
	if *check {
		fmt.Fprintf(stdout, "%s: configuration is valid\n", orDefaults(cfg.Path))
		return 0
	}
	hopts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var h slog.Handler = slog.NewTextHandler(stderr, hopts)
	if *logFormat == "json" {
		h = slog.NewJSONHandler(stderr, hopts)
	}
	log := slog.New(h)
	if *cleanup {
		if err := daemon.Cleanup(cfg); err != nil {
			fmt.Fprintf(stderr, "membraned: cleanup: %v\n", err)
			return 1
		}
		log.Info("removed every pin and attachment", "bpffs_dir", cfg.BPFFSDir)
		return 0
	}
	log.Info("membraned starting", "version", version.Version, "config", orDefaults(cfg.Path), "policy_dir", cfg.PolicyDir)
	if err := daemon.Run(ctx, cfg, daemon.Options{Logger: log}); err != nil {
		fmt.Fprintf(stderr, "membraned: %v\n", err)
		return 1
	}
	return 0
}

// printFlags is flag.PrintDefaults with the flags spelled --name, each
// followed by its argument's name from args (none for a boolean).
func printFlags(w io.Writer, fs *flag.FlagSet, args map[string]string) {
	fs.VisitAll(func(f *flag.Flag) {
		line := "  --" + f.Name
		if a := args[f.Name]; a != "" {
			line += " " + a
		}
		help := f.Usage
		if f.DefValue != "" && f.DefValue != "false" {
			help += fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(w, "%s\n    \t%s\n", line, help)
	})
}

// flagInError is a flag named in one of the flag package's errors.
var flagInError = regexp.MustCompile(`(: | for )-([a-zA-Z0-9][-a-zA-Z0-9_]*)`)

// twoDashes spells the flag an error of the flag package names with two
// dashes, as membraned's usage does ("flag provided but not defined:
// --bogus", whichever spelling was given).
func twoDashes(msg string) string {
	return flagInError.ReplaceAllString(msg, "$1--$2")
}

func orDefaults(p string) string {
	if p == "" {
		return "(defaults)"
	}
	return p
}
