package packaging

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// The paths the packaging issue lists; both packages must hold them (the
// unit directory differs: /lib on Debian 12, /usr/lib on RPM systems).
var requiredPaths = []string{
	"/usr/sbin/membraned",
	"/usr/bin/membrane",
	"/etc/membrane/membrane.hcl",
	"/etc/membrane/policies.d/example.hcl",
	"/usr/share/man/man1/membrane.1.gz",
	"/usr/share/man/man1/membrane-policy.1.gz",
	"/usr/share/man/man1/membrane-policy-check.1.gz",
	"/usr/share/man/man1/membrane-policy-trace.1.gz",
	"/usr/share/man/man5/membrane-policy.5.gz",
	"/usr/share/man/man8/membraned.8.gz",
	"/usr/share/bash-completion/completions/membrane",
	"/usr/share/fish/vendor_completions.d/membrane.fish",
	"/usr/share/doc/membrane/README.md",
	"/usr/share/doc/membrane/operations.md",
}

// lintianExplained are the lintian warnings docs/operations.md explains
// ("lintian"). Any other warning, and any error, fails the test.
var lintianExplained = map[string]bool{
	"hardening-no-pie":                  true,
	"hardening-no-relro":                true,
	"maintainer-script-calls-systemctl": true,
}

func TestBuildFailsClearlyWithoutBinaries(t *testing.T) {
	_, err := Build(t.Context(), Options{RepoRoot: repoRoot(t), BinDir: t.TempDir(), OutDir: t.TempDir()})
	if !errors.Is(err, ErrMissingBinary) || !strings.Contains(err.Error(), "make build") {
		t.Fatalf("Build with an empty bin dir: %v; want ErrMissingBinary telling to run make build", err)
	}
}

func TestDebHoldsTheListedFilesAndPassesLintian(t *testing.T) {
	testenv.RequireBinary(t, "dpkg-deb")
	testenv.RequireBinary(t, "lintian")
	res := testPackages(t)
	v, _ := PackageVersion(testVersion)
	if want := "membrane_" + v + "_amd64.deb"; filepath.Base(res.Deb) != want {
		t.Fatalf("deb is named %s, want %s", filepath.Base(res.Deb), want)
	}

	list := run(t, "dpkg-deb", "--contents", res.Deb)
	for _, p := range append(requiredPaths, "/lib/systemd/system/membraned.service", "/lib/systemd/system/membrane-envoy.service",
		"/usr/share/zsh/vendor-completions/_membrane", "/usr/share/doc/membrane/copyright",
		"/usr/share/doc/membrane/changelog.gz", "/etc/membrane/policies.d/") {
		if !strings.Contains(list, " ."+p+"\n") && !strings.Contains(list, " ."+p+" ") {
			t.Errorf("the deb lacks %s", p)
		}
	}
	if !regexp.MustCompile(`(?m)^-rwxr-xr-x root/root .* \./usr/sbin/membraned$`).MatchString(list) {
		t.Errorf("membraned is not an executable owned by root:\n%s", list)
	}

	ctrl := t.TempDir()
	run(t, "dpkg-deb", "--control", res.Deb, ctrl)
	conffiles, err := os.ReadFile(filepath.Join(ctrl, "conffiles"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"/etc/membrane/membrane.hcl", "/etc/membrane/policies.d/example.hcl"} {
		if !strings.Contains(string(conffiles), c+"\n") {
			t.Errorf("%s is not a conffile; conffiles:\n%s", c, conffiles)
		}
	}
	control, err := os.ReadFile(filepath.Join(ctrl, "control"))
	if err != nil {
		t.Fatal(err)
	}
	// The L7 proxy path runs nft: without nftables the proxy cannot start.
	depends := regexp.MustCompile(`(?m)^Depends: (.*)$`).FindSubmatch(control)
	if depends == nil || !regexp.MustCompile(`(^|, )nftables(,|$| )`).Match(depends[1]) {
		t.Errorf("the deb does not depend on nftables; control:\n%s", control)
	}
	prerm, _ := os.ReadFile(filepath.Join(ctrl, "prerm"))
	if !strings.Contains(string(prerm), "membraned --cleanup") {
		t.Errorf("prerm does not run membraned --cleanup:\n%s", prerm)
	}
	postinst, _ := os.ReadFile(filepath.Join(ctrl, "postinst"))
	for _, want := range []string{"deb-systemd-invoke start", "deb-systemd-invoke try-restart", "systemctl --system preset", "groupadd --system membrane", "daemon-reload"} {
		if !strings.Contains(string(postinst), want) {
			t.Errorf("postinst lacks %q", want)
		}
	}

	// lintian: no error; only the warnings operations.md explains.
	cmd := exec.Command("lintian", "--tag-display-limit", "0", "--no-cfg", res.Deb)
	out, _ := cmd.CombinedOutput() // exit status 2 on errors; judged below
	var unexplained []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || (f[0] != "E:" && f[0] != "W:") {
			continue
		}
		if f[0] == "E:" || !lintianExplained[f[2]] {
			unexplained = append(unexplained, line)
		}
	}
	if len(unexplained) > 0 {
		t.Errorf("lintian reports what docs/operations.md does not explain:\n%s\n\nfull output:\n%s", strings.Join(unexplained, "\n"), out)
	}
	t.Logf("lintian:\n%s", out)
}

func TestManPagesRenderWithoutWarnings(t *testing.T) {
	testenv.RequireBinary(t, "dpkg-deb")
	res := testPackages(t)
	root := t.TempDir()
	run(t, "dpkg-deb", "--extract", res.Deb, root)
	pages, _ := filepath.Glob(filepath.Join(root, "usr/share/man/man*/*.gz"))
	if len(pages) < 6 {
		t.Fatalf("only %d man pages: %v", len(pages), pages)
	}
	for _, p := range pages {
		data := run(t, "zcat", p)
		checkRoff(t, strings.TrimSuffix(filepath.Base(p), ".gz"), data)
	}
	// membrane-policy(5) really is docs/policy.md.
	md, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "policy.md"))
	if err != nil {
		t.Fatal(err)
	}
	page := run(t, "zcat", filepath.Join(root, "usr/share/man/man5/membrane-policy.5.gz"))
	for _, line := range strings.Split(string(md), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			if !strings.Contains(page, strings.ToUpper(escape(plain(strings.TrimSpace(h))))) {
				t.Errorf("membrane-policy(5) lacks the section %q of docs/policy.md", h)
			}
		}
	}
}

func TestRPMHoldsTheListedFilesScriptsAndRequirements(t *testing.T) {
	testenv.RequireBinary(t, "rpm")
	res := testPackages(t)
	v, _ := PackageVersion(testVersion)
	if want := "membrane-" + v + ".x86_64.rpm"; filepath.Base(res.RPM) != want {
		t.Fatalf("rpm is named %s, want %s", filepath.Base(res.RPM), want)
	}
	list := "\n" + run(t, "rpm", "-qpl", res.RPM)
	for _, p := range append(requiredPaths, "/usr/lib/systemd/system/membraned.service", "/usr/lib/systemd/system/membrane-envoy.service", "/usr/share/zsh/site-functions/_membrane", "/usr/share/doc/membrane/LICENSE") {
		if !strings.Contains(list, "\n"+p+"\n") {
			t.Errorf("the rpm lacks %s", p)
		}
	}
	reqs := run(t, "rpm", "-qpR", res.RPM)
	for _, want := range []string{"systemd", "shadow-utils", "nftables"} {
		if !regexp.MustCompile(`(?m)^` + want + `\s*$`).MatchString(reqs) {
			t.Errorf("rpm -qpR lacks %s:\n%s", want, reqs)
		}
	}
	confs := strings.Fields(run(t, "rpm", "-qpc", res.RPM))
	sort.Strings(confs)
	if got := strings.Join(confs, " "); got != "/etc/membrane/membrane.hcl /etc/membrane/policies.d/example.hcl" {
		t.Errorf("rpm config files: %s", got)
	}
	scripts := run(t, "rpm", "-qp", "--scripts", res.RPM)
	for _, want := range []string{"preinstall scriptlet", "groupadd --system membrane", "systemctl --system preset", "membraned --cleanup", "try-restart"} {
		if !strings.Contains(scripts, want) {
			t.Errorf("rpm scripts lack %q:\n%s", want, scripts)
		}
	}
	info := run(t, "rpm", "-qpi", res.RPM)
	for _, want := range []string{"Name        : membrane", "Version     : " + v, "License     : Apache-2.0"} {
		if !strings.Contains(info, want) {
			t.Errorf("rpm -qpi lacks %q:\n%s", want, info)
		}
	}
}

func TestBuildIsReproducible(t *testing.T) {
	// Two builds back to back (the shared test packages may be older than
	// a colleague's last edit of README.md or docs/).
	build := func() []byte {
		res, err := Build(t.Context(), Options{
			RepoRoot: repoRoot(t), BinDir: testBinaries(t), OutDir: t.TempDir(), Formats: []string{FormatDeb},
			MTime: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		})
		if err != nil {
			t.Fatal(err)
		}
		return mustRead(t, res.Deb)
	}
	a, b := build(), build()
	if string(a) != string(b) {
		t.Fatalf("two builds of the same inputs differ (%d and %d bytes)", len(a), len(b))
	}
}

// membraned(8) lists every signal the daemon handles (signal.Notify and
// signal.NotifyContext in cmd/membraned and daemon).
func TestDaemonManPageNamesEverySignalItHandles(t *testing.T) {
	testenv.RequireBinary(t, "dpkg-deb")
	res := testPackages(t)
	root := t.TempDir()
	run(t, "dpkg-deb", "--extract", res.Deb, root)
	page := run(t, "zcat", filepath.Join(root, "usr/share/man/man8/membraned.8.gz"))
	_, signals, _ := strings.Cut(page, ".SH SIGNALS\n")
	signals, _, _ = strings.Cut(signals, ".SH ")
	notify := regexp.MustCompile(`signal\.Notify(Context)?\(.*`)
	sig := regexp.MustCompile(`syscall\.(SIG[A-Z0-9]+)`)
	handled := map[string]bool{}
	for _, dir := range []string{"cmd/membraned", "daemon"} {
		srcs, _ := filepath.Glob(filepath.Join(repoRoot(t), dir, "*.go"))
		for _, src := range srcs {
			if strings.HasSuffix(src, "_test.go") {
				continue
			}
			for _, call := range notify.FindAllString(string(mustRead(t, src)), -1) {
				for _, m := range sig.FindAllStringSubmatch(call, -1) {
					handled[m[1]] = true
				}
			}
		}
	}
	if !handled["SIGTERM"] {
		t.Fatalf("found no signal.Notify of SIGTERM in cmd/membraned or daemon: the scan is broken")
	}
	for s := range handled {
		if !strings.Contains(signals, s) {
			t.Errorf("membraned handles %s, but membraned(8)'s SIGNALS does not name it:\n%s", s, signals)
		}
	}
}

// membraned(8) has an EXIT STATUS section naming every code that
// cmd/membraned's run returns.
func TestDaemonManPageNamesEveryExitCode(t *testing.T) {
	page, err := DaemonManPage(context.Background(), filepath.Join(testBinaries(t), "membraned"), testVersion, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	_, status, ok := strings.Cut(page.Roff, ".SH \"EXIT STATUS\"\n")
	if !ok {
		t.Fatalf("membraned(8) has no EXIT STATUS section:\n%s", page.Roff)
	}
	status, _, _ = strings.Cut(status, ".SH ")
	codes := regexp.MustCompile(`(?m)^\s*return ([0-9]+)$`).FindAllStringSubmatch(string(mustRead(t, filepath.Join(repoRoot(t), "cmd/membraned/main.go"))), -1)
	if len(codes) < 3 {
		t.Fatalf("found %d exit codes in cmd/membraned/main.go: the scan is broken", len(codes))
	}
	for _, c := range codes {
		if !strings.Contains(status, ".B "+c[1]+"\n") {
			t.Errorf("cmd/membraned exits %s, but membraned(8)'s EXIT STATUS does not name it:\n%s", c[1], status)
		}
	}
}

// membraned(8)'s OPTIONS spell every flag as its SYNOPSIS, the docs and
// membrane(1) do, with two dashes (--config PATH), not Go's flag
// package's one (-config string).
func TestDaemonManPageSpellsFlagsWithTwoDashes(t *testing.T) {
	page, err := DaemonManPage(context.Background(), filepath.Join(testBinaries(t), "membraned"), testVersion, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	_, opts, ok := strings.Cut(page.Roff, ".SH \"OPTIONS\"\n")
	if !ok {
		t.Fatalf("membraned(8) has no OPTIONS section:\n%s", page.Roff)
	}
	opts, _, _ = strings.Cut(opts, ".SH ")
	specs := regexp.MustCompile(`(?m)^\\fB(.*)\\fR$`).FindAllStringSubmatch(opts, -1)
	if len(specs) < 5 {
		t.Fatalf("read %d options from membraned(8)'s OPTIONS:\n%s", len(specs), opts)
	}
	for _, s := range specs {
		if !strings.HasPrefix(s[1], `\-\-`) || strings.Contains(s[1], "string") {
			t.Errorf("membraned(8) lists option %q, want --NAME [ARG]", s[1])
		}
	}
	if !strings.Contains(opts, `\fB\-\-config PATH\fR`) {
		t.Errorf("membraned(8) OPTIONS lack --config PATH:\n%s", opts)
	}
}
