package packaging

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"time"
)

// ManPage is one generated page: Name is the file name without the ".gz"
// (for example "membrane-policy-check.1"), Section its section number.
type ManPage struct {
	Name    string
	Section int
	Roff    string
}

// helpDoc is a command's --help output cut into its parts.
type helpDoc struct {
	Description string
	Usage       []string
	Aliases     string
	Examples    string
	Commands    [][2]string // name, short description
	Flags       []flagDoc
	GlobalFlags []flagDoc
}

type flagDoc struct{ Spec, Help string }

var (
	sectionHeading = regexp.MustCompile(`^([A-Z][A-Za-z ]*):\s*$`)
	commandLine    = regexp.MustCompile(`^\s+(\S+)\s{2,}(.*)$`)
	flagLine       = regexp.MustCompile(`^\s+(-\S.*?)(?:\s{2,}|\t|$)(.*)$`)
)

// parseHelp reads cobra's help layout (description, then "Usage:",
// "Available Commands:", "Flags:", "Global Flags:" sections). It also reads
// Go's flag package layout ("Usage of X:" then "  -flag type" lines each
// followed by an indented description).
func parseHelp(text string) helpDoc {
	var d helpDoc
	var desc []string
	section := ""
	var cur *[]flagDoc
	lines := strings.Split(strings.ReplaceAll(text, "\r", ""), "\n")
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if strings.HasPrefix(line, "Usage of ") && strings.HasSuffix(strings.TrimSpace(line), ":") {
			section, cur = "Flags", &d.Flags
			continue
		}
		// A Go flag.FlagSet with a custom Usage: "Usage: prog [options]"
		// followed by PrintDefaults.
		if u, ok := strings.CutPrefix(line, "Usage: "); ok && strings.TrimSpace(u) != "" {
			d.Usage = append(d.Usage, strings.TrimSpace(u))
			section, cur = "Flags", &d.Flags
			continue
		}
		if m := sectionHeading.FindStringSubmatch(line); m != nil {
			section = m[1]
			switch {
			case section == "Flags":
				cur = &d.Flags
			case section == "Global Flags":
				cur = &d.GlobalFlags
			default:
				cur = nil
			}
			continue
		}
		if strings.HasPrefix(line, "Use \"") && strings.Contains(line, "--help\" for more") {
			continue
		}
		switch {
		case section == "":
			desc = append(desc, line)
		case section == "Usage":
			if s := strings.TrimSpace(line); s != "" {
				d.Usage = append(d.Usage, s)
			}
		case section == "Aliases":
			if s := strings.TrimSpace(line); s != "" {
				d.Aliases = s
			}
		case section == "Examples":
			d.Examples += line + "\n"
		case strings.Contains(section, "Commands") || strings.Contains(section, "help topics"):
			if m := commandLine.FindStringSubmatch(line); m != nil {
				d.Commands = append(d.Commands, [2]string{m[1], strings.TrimSpace(m[2])})
			}
		case cur != nil:
			if m := flagLine.FindStringSubmatch(line); m != nil {
				*cur = append(*cur, flagDoc{Spec: strings.TrimSpace(m[1]), Help: strings.TrimSpace(m[2])})
			} else if s := strings.TrimSpace(line); s != "" && len(*cur) > 0 {
				f := &(*cur)[len(*cur)-1]
				f.Help = strings.TrimSpace(f.Help + " " + s)
			}
		}
	}
	d.Description = strings.TrimSpace(strings.Join(desc, "\n"))
	d.Examples = strings.TrimRight(d.Examples, "\n ")
	return d
}

// runHelp runs `bin args... --help` and returns what it printed. Go's flag
// package prints its usage on stderr and exits 0 or 2, so both streams are
// taken and a non-zero exit with output is accepted.
func runHelp(ctx context.Context, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "--help")...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "LANG=C", "NO_COLOR=1"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if out.Len() == 0 {
		return "", fmt.Errorf("%s %s --help printed nothing: %v", bin, strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		return "", fmt.Errorf("%s %s --help did not finish: %w", bin, strings.Join(args, " "), ctx.Err())
	}
	return out.String(), nil
}

// CLIManPages walks the command tree of the membrane binary through its
// --help output and returns membrane(1) and one page per subcommand
// (membrane-policy-check(1), ...). "help" is left out.
func CLIManPages(ctx context.Context, bin, version string, date time.Time) ([]ManPage, error) {
	var pages []ManPage
	// short is the one-line summary the parent lists the command with
	// (cobra's Short); the page's NAME line uses it.
	var walk func(path []string, short string) error
	walk = func(path []string, short string) error {
		text, err := runHelp(ctx, bin, path...)
		if err != nil {
			return err
		}
		d := parseHelp(text)
		if len(d.Usage) == 0 {
			return fmt.Errorf("membrane %s --help has no Usage section; is %s the membrane CLI?", strings.Join(path, " "), bin)
		}
		if short == "" {
			short = strings.Join(strings.Fields(strings.SplitN(d.Description, "\n\n", 2)[0]), " ")
		}
		var children []string
		shorts := map[string]string{}
		for _, c := range d.Commands {
			if c[0] != "help" {
				children = append(children, c[0])
				shorts[c[0]] = c[1]
			}
		}
		full := append([]string{"membrane"}, path...)
		name := strings.Join(full, "-")
		var see []string
		if len(path) > 0 {
			see = append(see, strings.Join(full[:len(full)-1], "-")+"(1)")
		}
		for _, c := range children {
			see = append(see, name+"-"+c+"(1)")
		}
		if len(path) == 0 {
			see = append(see, "membraned(8)", "membrane-policy(5)")
		}
		pages = append(pages, ManPage{
			Name:    name + ".1",
			Section: 1,
			Roff:    renderCommandPage(name, strings.Join(full, " "), short, 1, version, date, d, see),
		})
		for _, c := range children {
			if err := walk(append(append([]string{}, path...), c), shorts[c]); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(nil, ""); err != nil {
		return nil, err
	}
	return pages, nil
}

// DaemonManPage builds membraned(8) from the daemon's --help output and the
// fixed sections below (what it does, files, signals, exit status).
func DaemonManPage(ctx context.Context, bin, version string, date time.Time) (ManPage, error) {
	text, err := runHelp(ctx, bin)
	if err != nil {
		return ManPage{}, err
	}
	d := parseHelp(text)
	if len(d.Flags) == 0 {
		return ManPage{}, fmt.Errorf("membraned --help lists no options; is %s the daemon?", bin)
	}
	var b strings.Builder
	header(&b, "membraned", 8, version, date, "System Administration")
	b.WriteString(".SH NAME\nmembraned \\- Membrane's identity\\-aware container firewall daemon\n")
	b.WriteString(".SH SYNOPSIS\n")
	if len(d.Usage) == 0 {
		d.Usage = []string{"membraned [options]"}
	}
	for i, u := range d.Usage {
		if i > 0 {
			b.WriteString(".br\n")
		}
		b.WriteString(roffLine("\\fBmembraned\\fR" + escape(strings.TrimPrefix(u, "membraned"))))
	}
	b.WriteString(".SH DESCRIPTION\n")
	for _, p := range []string{
		"membraned gives every container on the host a numeric security identity from its labels and enforces the policies in /etc/membrane/policies.d with eBPF programs on the containers' host-side veths. It follows Docker and containerd (including Compose projects and Nomad allocations), sends HTTP rules to a transparent L7 proxy, and serves a local API that membrane(1) uses.",
		"It normally runs under systemd (membraned.service, Type=notify): it reports READY=1 after its first full reconcile and pings the watchdog from its reconcile loop. Programs, maps and links are pinned under /sys/fs/bpf/membrane, so a stop, crash or upgrade leaves enforcement in place; the next start adopts them.",
		"A policy set with an error is rejected whole, with positions; the previous set stays in force.",
	} {
		b.WriteString(".PP\n" + roffText(p) + "\n")
	}
	if d.Description != "" && !strings.HasPrefix(d.Description, "Usage") {
		b.WriteString(".PP\n" + roffText(d.Description) + "\n")
	}
	writeFlags(&b, "OPTIONS", d.Flags)
	b.WriteString(".SH SIGNALS\n.TP\n.B SIGTERM, SIGINT\nStop; the pinned datapath stays and keeps enforcing.\n")
	b.WriteString(".TP\n.B SIGHUP\nReload the policy directory, and check the configuration file, which is read at start only: an invalid one is logged and shown by \\fBmembrane status\\fR (the running configuration stays, but the next start would fail).\n")
	b.WriteString(".PP\nPolicy files are watched: a change in the policy directory is loaded without a signal.\n")
	b.WriteString(".SH \"EXIT STATUS\"\n")
	for _, e := range [][2]string{
		{"0", "stopped by SIGTERM or SIGINT, or --cleanup, --check-config, --version or --help done"},
		{"1", "an error: an invalid configuration (printed FILE:LINE:COL: error: ...), a failed start or a failed cleanup"},
		{"2", "a usage error: an unknown option, an argument, an empty --config (but with --cleanup), an unknown --log-format, or more than one of --cleanup, --check-config and --version"},
	} {
		b.WriteString(".TP\n.B " + e[0] + "\n" + roffText(e[1]) + "\n")
	}
	b.WriteString(".SH FILES\n")
	for _, f := range [][2]string{
		{"/etc/membrane/membrane.hcl", "configuration"},
		{"/etc/membrane/policies.d/*.hcl", "policies, loaded as one set"},
		{"/var/lib/membrane", "state: the identity store, the last good policy set, the endpoint ids of host-network containers"},
		{"/run/membrane/membrane.sock", "local API (HTTP+JSON), group membrane"},
		{"/sys/fs/bpf/membrane", "pinned programs, maps and links"},
	} {
		b.WriteString(".TP\n.I " + roffText(f[0]) + "\n" + roffText(f[1]) + "\n")
	}
	b.WriteString(".SH \"SEE ALSO\"\n.BR membrane (1),\n.BR membrane-policy (5),\n.BR systemctl (1),\n.BR journalctl (1)\n")
	return ManPage{Name: "membraned.8", Section: 8, Roff: b.String()}, nil
}

func header(b *strings.Builder, name string, section int, version string, date time.Time, manual string) {
	fmt.Fprintf(b, ".\\\" Generated by membrane's packaging (Go); do not edit.\n")
	fmt.Fprintf(b, ".TH %s %d \"%s\" \"membrane %s\" \"%s\"\n", strings.ToUpper(roffText(name)), section, date.UTC().Format("2006-01-02"), roffText(version), manual)
}

func renderCommandPage(name, command, short string, section int, version string, date time.Time, d helpDoc, see []string) string {
	var b strings.Builder
	header(&b, name, section, version, date, "Membrane Manual")
	short = strings.TrimSuffix(strings.TrimSpace(short), ".")
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n", roffText(name), roffText(lowerFirst(short)))
	b.WriteString(".SH SYNOPSIS\n")
	for i, u := range d.Usage {
		if i > 0 {
			b.WriteString(".br\n")
		}
		b.WriteString(roffLine("\\fB" + escape(command) + "\\fR" + escape(strings.TrimPrefix(u, command))))
	}
	if d.Description != "" {
		b.WriteString(".SH DESCRIPTION\n")
		writeParagraphs(&b, d.Description)
	}
	if d.Aliases != "" {
		b.WriteString(".SH ALIASES\n" + roffText(d.Aliases) + "\n")
	}
	if len(d.Commands) > 0 {
		b.WriteString(".SH COMMANDS\n")
		for _, c := range d.Commands {
			if c[0] == "help" {
				continue
			}
			short := strings.TrimSuffix(c[1], ".")
			fmt.Fprintf(&b, ".TP\n.B %s\n%s.\nSee \\fB%s\\-%s\\fR(1).\n", roffText(c[0]), roffText(short), roffText(name), roffText(c[0]))
		}
	}
	writeFlags(&b, "OPTIONS", d.Flags)
	writeFlags(&b, "GLOBAL OPTIONS", d.GlobalFlags)
	if d.Examples != "" {
		b.WriteString(".SH EXAMPLES\n.nf\n.RS 4\n")
		for _, l := range strings.Split(d.Examples, "\n") {
			b.WriteString(roffLine(escape(strings.TrimPrefix(l, "  "))))
		}
		b.WriteString(".RE\n.fi\n")
	}
	if section == 1 {
		b.WriteString(".SH \"EXIT STATUS\"\n0 on success, 1 on failure (for policy checks: invalid policies), 2 on a usage error.\n")
	}
	if len(see) > 0 {
		sort.Strings(see)
		b.WriteString(".SH \"SEE ALSO\"\n")
		for i, s := range see {
			open := strings.IndexByte(s, '(')
			sep := ","
			if i == len(see)-1 {
				sep = ""
			}
			fmt.Fprintf(&b, ".BR %s %s%s\n", roffText(s[:open]), s[open:], sep)
		}
	}
	return b.String()
}

func writeFlags(b *strings.Builder, title string, flags []flagDoc) {
	if len(flags) == 0 {
		return
	}
	fmt.Fprintf(b, ".SH %q\n", title)
	for _, f := range flags {
		fmt.Fprintf(b, ".TP\n%s", roffLine("\\fB"+escape(f.Spec)+"\\fR"))
		if f.Help != "" {
			b.WriteString(roffText(f.Help) + "\n")
		}
	}
}

func writeParagraphs(b *strings.Builder, text string) {
	for _, p := range strings.Split(text, "\n\n") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		b.WriteString(".PP\n")
		lines := strings.Split(p, "\n")
		indented := false
		for _, l := range lines {
			if strings.HasPrefix(l, "  ") {
				indented = true
			}
		}
		if indented {
			// Keep hand-laid-out text (lists, tables) as it is.
			b.WriteString(".nf\n")
			for _, l := range lines {
				b.WriteString(roffLine(escape(l)))
			}
			b.WriteString(".fi\n")
			continue
		}
		b.WriteString(roffText(strings.Join(lines, " ")) + "\n")
	}
}

func lowerFirst(s string) string {
	if len(s) > 1 && s[0] >= 'A' && s[0] <= 'Z' && !(s[1] >= 'A' && s[1] <= 'Z') {
		return string(s[0]+'a'-'A') + s[1:]
	}
	return s
}

// escape makes text safe inside a roff line: backslashes and hyphens (so
// options copy and paste as ASCII hyphen-minus).
func escape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	return s
}

// roffLine ends an already-escaped line, guarding a leading control
// character ('.' or '\”) so roff does not read it as a request.
func roffLine(s string) string {
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s + "\n"
}

// roffText escapes plain text and guards every line start.
func roffText(s string) string {
	lines := strings.Split(escape(s), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSuffix(roffLine(strings.TrimLeft(l, " ")), "\n")
	}
	return strings.Join(lines, "\n")
}
