package packaging

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/runtime/linkwatch"
)

func TestPackageVersionSuitsDpkgAndRpm(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"v1.2.3", "1.2.3"},
		{"1.2.3", "1.2.3"},
		{"v1.2.3-4-gabcdef0", "1.2.3+4.gabcdef0"},
		{"v1.2.3-4-gabcdef0-dirty", "1.2.3+4.gabcdef0.dirty"},
		{"0.1.0-dev", "0.1.0~dev"},
		{"abcdef0", "0.0.0~git.abcdef0"},
		{"abcdef0-dirty", "0.0.0~git.abcdef0.dirty"},
	} {
		got, err := PackageVersion(c.in)
		if err != nil || got != c.want {
			t.Errorf("PackageVersion(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "v", "1.2.3 beta", "1.2/3"} {
		if got, err := PackageVersion(bad); err == nil {
			t.Errorf("PackageVersion(%q) = %q, want an error", bad, got)
		}
	}
	// The order dpkg gives them must be the order of the releases.
	if _, err := exec.LookPath("dpkg"); err != nil {
		return
	}
	order := []string{"0.0.0~git.abcdef0", "0.1.0~dev", "0.1.0", "1.2.3", "1.2.3+4.gabcdef0"}
	for i := 1; i < len(order); i++ {
		if err := exec.Command("dpkg", "--compare-versions", order[i-1], "lt", order[i]).Run(); err != nil {
			t.Errorf("dpkg does not order %s before %s", order[i-1], order[i])
		}
	}
}

const cobraHelp = `Check policy files offline.

Every file is parsed and validated.

Usage:
  membrane policy check [--format text|json] PATH... [flags]

Aliases:
  check, validate

Examples:
  membrane policy check /etc/membrane/policies.d

Available Commands:
  help        Help about any command
  sub         A subcommand

Flags:
      --format string   output format: text or json (default "text")
  -h, --help            help for check

Global Flags:
      --socket string   the API socket
                        (continued help)

Use "membrane policy check [command] --help" for more information about a command.
`

func TestParseHelpReadsCobraLayout(t *testing.T) {
	d := parseHelp(cobraHelp)
	want := helpDoc{
		Description: "Check policy files offline.\n\nEvery file is parsed and validated.",
		Usage:       []string{"membrane policy check [--format text|json] PATH... [flags]"},
		Aliases:     "check, validate",
		Examples:    "  membrane policy check /etc/membrane/policies.d",
		Commands:    [][2]string{{"help", "Help about any command"}, {"sub", "A subcommand"}},
		Flags: []flagDoc{
			{"--format string", `output format: text or json (default "text")`},
			{"-h, --help", "help for check"},
		},
		GlobalFlags: []flagDoc{{"--socket string", "the API socket (continued help)"}},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("parseHelp:\n got %#v\nwant %#v", d, want)
	}
}

func TestParseHelpReadsCustomFlagUsage(t *testing.T) {
	d := parseHelp("Usage: membraned [--config PATH] [--cleanup]\n\n  -cleanup\n    \tremove every pin\n  -config string\n    \tconfiguration file (HCL) (default \"/etc/membrane/membrane.hcl\")\n")
	if !reflect.DeepEqual(d.Usage, []string{"membraned [--config PATH] [--cleanup]"}) || len(d.Flags) != 2 || d.Flags[1].Spec != "-config string" {
		t.Fatalf("parseHelp: %#v", d)
	}
}

func TestParseHelpReadsFlagPackageLayout(t *testing.T) {
	d := parseHelp("Usage of membraned:\n  -cleanup\n    \tremove every pin and attachment, then exit\n  -config string\n    \tconfiguration file (default \"/etc/membrane/membrane.hcl\")\n")
	want := []flagDoc{
		{"-cleanup", "remove every pin and attachment, then exit"},
		{"-config string", `configuration file (default "/etc/membrane/membrane.hcl")`},
	}
	if !reflect.DeepEqual(d.Flags, want) {
		t.Fatalf("flags: got %#v, want %#v", d.Flags, want)
	}
}

// checkRoff renders a page with man(1) and fails on any groff warning.
func checkRoff(t *testing.T, name, roff string) {
	t.Helper()
	testenv.RequireBinary(t, "man")
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(roff), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", p)
	cmd.Env = append(os.Environ(), "MANWIDTH=80", "LC_ALL=C.UTF-8")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("man %s: %v: %s", name, err, stderr.String())
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Fatalf("man %s warns:\n%s\n--- page ---\n%s", name, s, roff)
	}
}

func TestMarkdownManPageRendersCleanly(t *testing.T) {
	md := "# Policy language\n\nIntro with `code`, **bold** and *emphasis*.\n\n## Blocks\n\n" +
		"```hcl\npolicy \"api\" {\n  selector = \"app=api\"\n}\n.leading dot\n```\n\n" +
		"| form | meaning |\n|---|---|\n| `k=v` | equals |\n\n- one\n- two\n  - nested\n1. first\n\n### Sub\n\n'quote at start\n.dot at start\n"
	p := MarkdownManPage("membrane-policy", 5, md, "1.0", time.Unix(0, 0), "Membrane's policy language")
	checkRoff(t, p.Name, p.Roff)
	for _, want := range []string{`.SH "BLOCKS"`, `.SS "Sub"`, `\fBcode\fR`, `\fBbold\fR`, `\fIemphasis\fR`, `\&.leading dot`, `k=v  |  equals`, `\&'quote`} {
		if !strings.Contains(p.Roff, want) {
			t.Errorf("page lacks %q:\n%s", want, p.Roff)
		}
	}
}

func TestDefaultConfigParsesToTheDefaults(t *testing.T) {
	src, err := embedded.ReadFile("files/membrane.hcl")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("/etc/membrane/membrane.hcl", src)
	if err != nil {
		t.Fatalf("the shipped membrane.hcl is invalid: %v", err)
	}
	cfg.Path = ""
	if want := config.Default(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("the shipped membrane.hcl changes settings:\n got %+v\nwant %+v", cfg, want)
	}
	// Uncommented, every setting must still be valid and give the defaults:
	// the commented values are the real defaults, not stale ones.
	uncommented := uncommentSettings(string(src))
	cfg2, err := config.Parse("uncommented.hcl", []byte(uncommented))
	if err != nil {
		t.Fatalf("membrane.hcl with its settings uncommented is invalid: %v\n%s", err, uncommented)
	}
	cfg2.Path = ""
	// bridges: nil in the defaults means the link watcher's list, which
	// the file spells out.
	if reflect.DeepEqual(cfg2.Bridges, linkwatch.DefaultBridges) {
		cfg2.Bridges = nil
	}
	// %+v, not DeepEqual: an uncommented "namespaces = []" is an empty
	// slice where the default is nil, which means the same.
	if got, want := fmt.Sprintf("%+v", *cfg2), fmt.Sprintf("%+v", *config.Default()); got != want {
		t.Fatalf("the commented values in membrane.hcl are not the defaults:\n got %s\nwant %s\n%s", got, want, uncommented)
	}
}

var settingLine = regexp.MustCompile(`^# ( *[a-z0-9_]+ *= .*| *[a-z0-9_]+( "[a-z]+")? \{| *\})$`)

// uncommentSettings strips "# " from the lines that are settings (an
// attribute, a block's opening or closing line), leaving prose commented.
func uncommentSettings(src string) string {
	lines := strings.Split(src, "\n")
	for i, l := range lines {
		if settingLine.MatchString(l) {
			lines[i] = strings.TrimPrefix(l, "# ")
		}
	}
	return strings.Join(lines, "\n")
}

func TestExamplePolicyEnforcesNothingAndIsValidUncommented(t *testing.T) {
	src, err := embedded.ReadFile("files/policies.d/example.hcl")
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range strings.Split(string(src), "\n") {
		if s := strings.TrimSpace(l); s != "" && !strings.HasPrefix(s, "#") {
			t.Fatalf("example.hcl:%d is not a comment: %q (the shipped example must enforce nothing)", i+1, l)
		}
	}
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	set, rep := policies.Load(write("example.hcl", string(src)))
	if rep.HasErrors() {
		t.Fatalf("example.hcl as shipped: %v", rep.Err())
	}
	if len(set.Policies) != 0 {
		t.Fatalf("example.hcl as shipped declares %d policies, want none", len(set.Policies))
	}
	// The commented policies themselves must be valid once uncommented.
	var blocks []string
	inBlock := false
	for _, l := range strings.Split(string(src), "\n") {
		if strings.HasPrefix(l, "# policy ") {
			inBlock = true
		}
		if inBlock {
			blocks = append(blocks, strings.TrimPrefix(strings.TrimPrefix(l, "#"), " "))
		}
		if inBlock && l == "# }" {
			inBlock = false
		}
	}
	set, rep = policies.Load(write("uncommented.hcl", strings.Join(blocks, "\n")))
	if rep.HasErrors() {
		t.Fatalf("example.hcl uncommented is invalid: %v\n%s", rep.Err(), strings.Join(blocks, "\n"))
	}
	if len(set.Policies) != 2 {
		t.Fatalf("example.hcl uncommented declares %d policies, want 2", len(set.Policies))
	}
}

func TestMaintainerScriptsAreValidShell(t *testing.T) {
	for _, dir := range []string{"files/scripts/deb", "files/scripts/rpm"} {
		entries, err := embedded.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			data, _ := embedded.ReadFile(dir + "/" + e.Name())
			cmd := exec.Command("sh", "-n")
			cmd.Stdin = strings.NewReader(string(data))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%s/%s: %v: %s", dir, e.Name(), err, out)
			}
			if !strings.HasPrefix(string(data), "#!/bin/sh\n") {
				t.Errorf("%s/%s does not start with #!/bin/sh", dir, e.Name())
			}
		}
	}
}
