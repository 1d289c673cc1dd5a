package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/linkwatch"
	"github.com/spf13/cobra"
)

// newPolicyCheckCmd: `membrane policy check [--format text|json] PATH...`.
func newPolicyCheckCmd() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "check [--format text|json] PATH...",
		Short: "Validate policy files",
		Long: `Validate policy files offline, as membraned would load them.

The files and directories named are loaded together as one policy set (a
directory contributes its *.hcl files in lexical order, like the daemon's
policies.d). Each subdirectory of a named directory that holds *.hcl files is
checked as a set of its own, since the daemon never merges subdirectories.
Inside directories, membrane.hcl (the daemon configuration) and *.nomad.hcl
(Nomad job specifications) are not policy files and are skipped, and so is a
name ending in .hcl in another case (web.HCL), which membraned would not load;
a file named on the command line is always checked, with a note when membraned
would not load it from its policy directory (hidden, or not *.hcl). With
--format json the skipped files and notes go to standard error, and standard
output holds only the JSON array of diagnostics.

Exit status: 0 valid (warnings may be printed), 1 invalid, 2 usage error
(no PATH, a PATH that does not exist, an unknown --format).`,
		RunE: func(c *cobra.Command, args []string) error {
			return runCheck(c.OutOrStdout(), c.ErrOrStderr(), format, args)
		},
	}
	cmd.Flags().StringVar(&format, "format", "text", "output format: text or json")
	return cmd
}

// checkSet is one policy set that check validates: the named paths, or one
// subdirectory of a named directory.
type checkSet struct {
	name  string // the directory, or the named paths
	sub   bool   // a subdirectory found by the walk
	paths []string
	set   *policies.Set
	rep   *policies.Report
}

func runCheck(out, errOut io.Writer, format string, args []string) error {
	if format != "text" && format != "json" {
		return usageError("--format must be text or json, not %q", format)
	}
	if len(args) == 0 {
		return usageError("policy check needs at least one PATH (a policy file or directory)")
	}
	top := &checkSet{}
	sets := []*checkSet{top}
	var skipped, notes []string
	for _, p := range args {
		st, err := os.Stat(p)
		if err != nil {
			if p == "-" {
				return usageError("policy check reads no standard input: name a policy file or directory")
			}
			if errors.Is(err, fs.ErrNotExist) {
				return usageError("%s does not exist", p)
			}
			return usageError("%v", err)
		}
		if !st.IsDir() {
			top.paths = append(top.paths, p)
			if base := filepath.Base(p); strings.HasPrefix(base, ".") || !strings.HasSuffix(base, ".hcl") {
				notes = append(notes, fmt.Sprintf("%s: membraned would not load this file from its policy directory, where it reads only *.hcl files that are not hidden", p))
			}
			continue
		}
		files, skip, err := policyFiles(p)
		if err != nil {
			return err
		}
		top.paths = append(top.paths, files...)
		skipped = append(skipped, skip...)
		subs, skip, err := subdirSets(p)
		if err != nil {
			return err
		}
		sets = append(sets, subs...)
		skipped = append(skipped, skip...)
	}
	top.name = strings.Join(args, " ")
	nets, addrs := hostNetworks(), hostAddrs()
	for _, s := range sets {
		s.set, s.rep = policies.LoadForCheck(policies.CheckEnv{Networks: nets, HostAddrs: addrs, Uncounted: endpoint.DefaultExcluded}, s.paths...)
	}
	// A named directory without *.hcl files of its own, whose
	// subdirectories hold the policies (examples/), is not a set worth a
	// line of its own.
	if len(sets) > 1 && len(sets[0].rep.Files) == 0 && len(sets[0].rep.Diagnostics) == 0 {
		sets = sets[1:]
	}

	invalid := false
	for _, s := range sets {
		invalid = invalid || s.rep.HasErrors()
	}
	if format == "json" {
		// Standard output is the array of diagnostics alone; what was
		// skipped and why goes to standard error, so that a CI log still
		// shows a web.HCL its policy directory would not load.
		if err := writeSkipped(errOut, skipped, notes); err != nil {
			return err
		}
		if err := writeCheckJSON(out, sets); err != nil {
			return err
		}
	} else if err := writeCheckText(out, sets, skipped, notes); err != nil {
		return err
	}
	if invalid {
		return silentExit(1)
	}
	return nil
}

// notPolicyFile says why a *.hcl file found in a directory is not a policy
// file: deployment trees (examples/, a host's /etc/membrane) keep the
// daemon's configuration and Nomad job specifications, HCL too, next to
// their policies.
func notPolicyFile(name string) string {
	switch {
	case name == "membrane.hcl":
		return "the daemon configuration"
	case strings.HasSuffix(name, ".nomad.hcl"):
		return "a Nomad job specification"
	}
	return ""
}

// policyFiles lists the policy files of dir, as the daemon would read them,
// less the files that are not policies; skipped explains those.
func policyFiles(dir string) (files, skipped []string, err error) {
	all, err := policies.ListDir(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, f := range all {
		if why := notPolicyFile(filepath.Base(f)); why != "" {
			skipped = append(skipped, fmt.Sprintf("%s: %s, not a policy file (membraned reads every *.hcl of its policy_dir as one: keep it out of there)", f, why))
			continue
		}
		files = append(files, f)
	}
	// A policy file named in another case (web.HCL) is passed over by the
	// daemon as by ListDir, and would enforce nothing: say so.
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, ".") && !strings.HasSuffix(name, ".hcl") && strings.HasSuffix(strings.ToLower(name), ".hcl") {
			skipped = append(skipped, fmt.Sprintf("%s: membraned reads only names ending in .hcl (lower case), so it would not load this file: rename it", filepath.Join(dir, name)))
		}
	}
	return files, skipped, nil
}

// subdirSets finds, under dir, every subdirectory (not hidden) that holds
// policy files, in lexical order.
func subdirSets(dir string) (sets []*checkSet, skipped []string, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() || p == dir {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		files, skip, err := policyFiles(p)
		if err != nil {
			return err
		}
		skipped = append(skipped, skip...)
		if len(files) > 0 {
			sets = append(sets, &checkSet{name: p, paths: files, sub: true})
		}
		return nil
	})
	return sets, skipped, err
}

func writeCheckJSON(out io.Writer, sets []*checkSet) error {
	all := []json.RawMessage{}
	for _, s := range sets {
		b, err := s.rep.JSON()
		if err != nil {
			return err
		}
		var items []json.RawMessage
		if err := json.Unmarshal(b, &items); err != nil {
			return err
		}
		all = append(all, items...)
	}
	b, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s\n", b)
	return err
}

// writeSkipped writes a line for each file skipped and each note.
// File names are what others wrote: termSafe (decision 92).
func writeSkipped(out io.Writer, skipped, notes []string) error {
	out = termSafe(out)
	for _, s := range skipped {
		if _, err := fmt.Fprintf(out, "skipped %s\n", s); err != nil {
			return err
		}
	}
	for _, s := range notes {
		if _, err := fmt.Fprintf(out, "note: %s\n", s); err != nil {
			return err
		}
	}
	return nil
}

func writeCheckText(out io.Writer, sets []*checkSet, skipped, notes []string) error {
	color := isTerminal(out) && os.Getenv("NO_COLOR") == ""
	if err := writeSkipped(out, skipped, notes); err != nil {
		return err
	}
	for _, s := range sets {
		// The contract's line form first, one per diagnostic, so that
		// scripts and editors can read them; then HCL's rendering with the
		// source lines and the details.
		for _, d := range s.rep.Diagnostics {
			if _, err := fmt.Fprintln(out, d.String()); err != nil {
				return err
			}
		}
		if len(s.rep.Diagnostics) > 0 {
			if _, err := fmt.Fprintln(out); err != nil {
				return err
			}
			if err := s.rep.WriteText(out, color); err != nil {
				return err
			}
		}
		prefix := ""
		if s.sub || len(sets) > 1 {
			prefix = s.name + ": "
		}
		nerr, nwarn := len(s.rep.Errors()), len(s.rep.Warnings())
		var line string
		if s.rep.HasErrors() {
			line = fmt.Sprintf("%s%s, %s in %s: invalid", prefix,
				plural(nerr, "error", "errors"), plural(nwarn, "warning", "warnings"), plural(len(s.rep.Files), "file", "files"))
		} else {
			line = fmt.Sprintf("%s%s, %s in %s: valid", prefix,
				plural(len(s.set.Policies), "policy", "policies"), plural(len(s.set.Rules()), "rule", "rules"),
				plural(len(s.rep.Files), "file", "files"))
			if nwarn > 0 {
				line += fmt.Sprintf(" (%s)", plural(nwarn, "warning", "warnings"))
			}
		}
		if _, err := fmt.Fprintln(termSafe(out), line); err != nil { // a directory's name
			return err
		}
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// hostNetworks is containerNetworks and hostAddrs is interfaceAddrs; tests
// that must not depend on this host's interfaces replace them.
var (
	hostNetworks = containerNetworks
	hostAddrs    = interfaceAddrs
)

// interfaceAddrs are the addresses of this host's interfaces, loopback and
// link-local ones aside (a container's 127.0.0.1 is its own, and a
// link-local address is one link's). None when they cannot be listed.
func interfaceAddrs() []policies.HostAddr {
	var out []policies.HostAddr
	for _, ia := range interfacePrefixes(func(string) bool { return true }) {
		if !ia.prefix.Addr().IsLoopback() {
			out = append(out, policies.HostAddr{Name: ia.name, Addr: ia.prefix.Addr()})
		}
	}
	return out
}

// containerNetworks are the subnets of the container networks this host
// has, as check can see them without a daemon: the addresses of the
// bridges membraned manages by default (linkwatch.DefaultBridges: Docker's
// docker0 and br-*, CNI's and nerdctl's). Link-local addresses are left
// out. None when the interfaces cannot be listed.
func containerNetworks() []policies.ContainerNetwork {
	managed := func(name string) bool {
		return slices.ContainsFunc(linkwatch.DefaultBridges, func(pat string) bool {
			ok, _ := path.Match(pat, name)
			return ok
		})
	}
	var out []policies.ContainerNetwork
	for _, ia := range interfacePrefixes(managed) {
		out = append(out, policies.ContainerNetwork{Name: ia.name, Prefix: ia.prefix.Masked()})
	}
	return out
}

// ifacePrefix is one address of an interface, with its prefix length.
type ifacePrefix struct {
	name   string
	prefix netip.Prefix
}

// interfacePrefixes are the addresses of the interfaces whose names keep
// takes, link-local ones aside. None when the interfaces cannot be listed.
func interfacePrefixes(keep func(name string) bool) []ifacePrefix {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []ifacePrefix
	for _, ifc := range ifs {
		if !keep(ifc.Name) {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			p, ok := netipPrefix(ipn)
			if !ok || p.Addr().IsLinkLocalUnicast() {
				continue
			}
			out = append(out, ifacePrefix{ifc.Name, p})
		}
	}
	return out
}

// netipPrefix is ipn as a netip.Prefix.
func netipPrefix(ipn *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(ipn.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := ipn.Mask.Size()
	if bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}
