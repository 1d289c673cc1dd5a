package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
)

// runCLI runs the command line with args in this process. policy check
// sees no container network and no host address: its output must not depend
// on this host's interfaces (TestCheckWarnsAboutCIDROverlappingABridge and
// TestCheckWarnsAtCIDRThatIsAHostAddress see some).
func runCLI(t *testing.T, args ...string) (string, int, error) {
	t.Helper()
	out, _, code, err := runCLIStderr(t, args...)
	return out, code, err
}

// runCLIStderr is runCLI, with what the command wrote to standard error.
func runCLIStderr(t *testing.T, args ...string) (stdout, stderr string, code int, err error) {
	t.Helper()
	defer func(f func() []policies.ContainerNetwork) { hostNetworks = f }(hostNetworks)
	defer func(f func() []policies.HostAddr) { hostAddrs = f }(hostAddrs)
	hostNetworks = func() []policies.ContainerNetwork { return nil }
	hostAddrs = func() []policies.HostAddr { return nil }
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), errOut.String(), exitCode(err), err
}

func writePolicy(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

const testdata = "../../policies/testdata"

func TestCheckValidFileExitsZeroWithSummary(t *testing.T) {
	out, code, err := runCLI(t, "policy", "check", testdata+"/valid/10-spec-example.hcl")
	if code != 0 || err != nil {
		t.Fatalf("exit %d, err %v, output:\n%s", code, err, out)
	}
	if out != "1 policy, 5 rules in 1 file: valid\n" {
		t.Errorf("output %q", out)
	}
}

func TestCheckValidDirectoryPrintsWarnings(t *testing.T) {
	out, code, _ := runCLI(t, "policy", "check", testdata+"/valid")
	if code != 0 {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
	if !strings.Contains(out, testdata+"/valid/41-cidr.hcl:11:37: warning: CIDR \"10.1.2.3/8\" has host bits set") {
		t.Errorf("warning line missing:\n%s", out)
	}
	// A header rule on an x-envoy- field both engines drop (decision 82).
	if !strings.Contains(out, testdata+`/valid/70-warnings.hcl:55:19: warning: Header rule on "X-Envoy-Retry-On" can never match`) {
		t.Errorf("x-envoy- warning line missing:\n%s", out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "12 policies, ") || !strings.HasSuffix(last, " in 13 files: valid (12 warnings)") {
		t.Errorf("summary %q", last)
	}
}

func TestCheckInvalidFileExitsOneWithContractLines(t *testing.T) {
	out, code, _ := runCLI(t, "policy", "check", testdata+"/invalid/port_zero.hcl", testdata+"/invalid/unknown_entity.hcl")
	if code != 1 {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
	lines := strings.Split(out, "\n")
	// Both files declare "api", so the second one also has a duplicate.
	want := []string{
		testdata + `/invalid/port_zero.hcl:5:14: error: Invalid port "0/tcp": port 0 is not allowed; ports are 1-65535`,
		testdata + `/invalid/unknown_entity.hcl:2:8: error: Duplicate policy "api"`,
		testdata + `/invalid/unknown_entity.hcl:5:28: error: Unknown entity "wrld"; did you mean "world"?`,
	}
	for i, w := range want {
		if lines[i] != w {
			t.Errorf("line %d = %q, want %q", i+1, lines[i], w)
		}
	}
	for _, s := range []string{"Error: Invalid port", "   5:     ports = [\"0/tcp\"]", "3 errors, 0 warnings in 2 files: invalid"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
}

func TestCheckJSON(t *testing.T) {
	out, code, _ := runCLI(t, "policy", "check", "--format", "json", testdata+"/invalid/bad_cidr.hcl", testdata+"/valid/41-cidr.hcl")
	if code != 1 {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
	var items []map[string]any
	if err := json.Unmarshal([]byte(out), &items); err != nil {
		t.Fatalf("stdout is not one JSON array: %v\n%s", err, out)
	}
	if len(items) != 2 {
		t.Fatalf("%d items:\n%s", len(items), out)
	}
	first := items[0]
	for k, v := range map[string]any{"file": testdata + "/invalid/bad_cidr.hcl", "line": 5.0, "column": 34.0, "severity": "error", "summary": `Invalid CIDR "10.0.0.0/33" in to_cidr`} {
		if first[k] != v {
			t.Errorf("%s = %v, want %v", k, first[k], v)
		}
	}
	if d, _ := first["detail"].(string); !strings.Contains(d, "prefix length out of range") {
		t.Errorf("detail %q", d)
	}
	if items[1]["severity"] != "warning" {
		t.Errorf("second item %v", items[1])
	}

	out, code, _ = runCLI(t, "policy", "check", "--format=json", testdata+"/valid/10-spec-example.hcl")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("valid set: exit %d, output %q", code, out)
	}
}

func TestCheckUsageErrorsExitTwo(t *testing.T) {
	for _, args := range [][]string{
		{"policy", "check"},
		{"policy", "check", "--format", "yaml", testdata + "/valid"},
		{"policy", "check", filepath.Join(t.TempDir(), "missing")},
		{"policy", "check", "--colour", testdata + "/valid"},
		{"policy", "check", "--format"},
	} {
		out, code, err := runCLI(t, args...)
		if code != 2 {
			t.Errorf("%v: exit %d (err %v), want 2; output:\n%s", args, code, err, out)
		}
	}
}

// Subdirectories are sets of their own: the same policy name in two of
// them is fine, an error in one fails the check, hidden ones are skipped.
func TestCheckRecursesIntoSubdirectoriesAsSeparateSets(t *testing.T) {
	root := t.TempDir()
	ok := "policy \"api\" {\n  selector = \"app=api\"\n}\n"
	writePolicy(t, filepath.Join(root, "compose", "policies", "api.hcl"), ok)
	writePolicy(t, filepath.Join(root, "nomad", "api.hcl"), ok)
	writePolicy(t, filepath.Join(root, "nomad", "job.nomad"), "job {")
	writePolicy(t, filepath.Join(root, ".git", "x.hcl"), "junk {")
	// HCL that is not a policy file: skipped inside directories.
	writePolicy(t, filepath.Join(root, "membrane.hcl"), "policy_dir = \"/etc/membrane/policies.d\"\n")
	writePolicy(t, filepath.Join(root, "nomad", "web.nomad.hcl"), "job \"web\" {\n}\n")
	out, code, _ := runCLI(t, "policy", "check", root)
	if code != 0 {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
	want := "skipped " + filepath.Join(root, "membrane.hcl") + ": the daemon configuration, not a policy file (membraned reads every *.hcl of its policy_dir as one: keep it out of there)\n" +
		"skipped " + filepath.Join(root, "nomad", "web.nomad.hcl") + ": a Nomad job specification, not a policy file (membraned reads every *.hcl of its policy_dir as one: keep it out of there)\n" +
		filepath.Join(root, "compose", "policies") + ": 1 policy, 0 rules in 1 file: valid\n" +
		filepath.Join(root, "nomad") + ": 1 policy, 0 rules in 1 file: valid\n"
	if out != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}

	// Named explicitly, a file is always checked.
	out, code, _ = runCLI(t, "policy", "check", filepath.Join(root, "nomad", "web.nomad.hcl"))
	if code != 1 || !strings.Contains(out, `Unknown block "job"`) {
		t.Errorf("explicit non-policy file: exit %d, output:\n%s", code, out)
	}

	writePolicy(t, filepath.Join(root, "nomad", "bad.hcl"), "policy \"x\" {\n  selector = \"a in\"\n}\n")
	out, code, _ = runCLI(t, "policy", "check", root)
	if code != 1 || !strings.Contains(out, filepath.Join(root, "nomad", "bad.hcl")+":2:19: error: Invalid selector") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
}

func TestCheckAcceptsTheExamples(t *testing.T) {
	if _, err := os.Stat("../../examples/policies"); err != nil {
		t.Fatalf("examples/policies missing: %v", err)
	}
	out, code, _ := runCLI(t, "policy", "check", "../../examples")
	if code != 0 || !strings.Contains(out, "examples/policies: ") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
}

// TestCheckBinaryExitCodes runs the real binary, so that main's mapping of
// errors to exit codes and to stderr is covered too.
func TestCheckBinaryExitCodes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "membrane")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		args       []string
		code       int
		stdout     string
		stderrPart string
	}{
		{[]string{testdata + "/valid/10-spec-example.hcl"}, 0, "1 policy, 5 rules in 1 file: valid\n", ""},
		{[]string{testdata + "/invalid/port_zero.hcl"}, 1, testdata + "/invalid/port_zero.hcl:5:14: error: Invalid port", ""},
		{[]string{}, 2, "", "needs at least one PATH"},
		{[]string{"/nonexistent/policies.d"}, 2, "", "/nonexistent/policies.d does not exist"},
		{[]string{"-"}, 2, "", "policy check reads no standard input: name a policy file or directory"},
	} {
		cmd := exec.Command(bin, append([]string{"policy", "check"}, tc.args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code || !strings.HasPrefix(stdout.String(), tc.stdout) || !strings.Contains(stderr.String(), tc.stderrPart) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d, stdout prefix %q, stderr containing %q",
				tc.args, code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderrPart)
		}
	}
}

// TestCheckWarnsAboutCIDROverlappingABridge: with a Docker-named bridge on
// the host (here in a network namespace of the test's own), a CIDR that
// overlaps its subnet is a warning at the CIDR (a CIDR rule does not reach
// managed containers); a CIDR elsewhere, and 0.0.0.0/0, are not.
func TestCheckWarnsAboutCIDROverlappingABridge(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t, "mtck-")
	ns.MustExec(t, "ip", "link", "add", "br-mtcheck", "type", "bridge")
	ns.MustExec(t, "ip", "addr", "add", "172.31.250.1/24", "dev", "br-mtcheck")
	ns.MustExec(t, "ip", "link", "add", "mtother", "type", "bridge")
	ns.MustExec(t, "ip", "addr", "add", "198.51.100.1/24", "dev", "mtother") // not a container bridge's name
	file := filepath.Join(t.TempDir(), "p.hcl")
	writePolicy(t, file, `policy "x" {
  selector = "app=x"
  egress {
    to_cidr = ["203.0.113.0/24", "172.31.250.128/25", "0.0.0.0/0", "198.51.100.0/24"]
    ports   = ["443/tcp"]
  }
}
`)
	var out bytes.Buffer
	var code int
	if err := ns.Do(func() error {
		code = exitCode(runCheck(&out, io.Discard, "text", []string{file}))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := file + `:4:34: warning: CIDR "172.31.250.128/25" overlaps container network 172.31.250.0/24 (br-mtcheck)`
	if code != 0 || !strings.Contains(out.String(), want+"\n") || strings.Count(out.String(), "overlaps container network") != 2 {
		// Twice: the contract line and the snippet's heading.
		t.Errorf("exit %d, output:\n%s\nwant only the warning %q", code, out.String(), want)
	}
}

// A CIDR that is one address of this host (a bridge's gateway address, an
// uplink's address) names the host, which CIDR rules never match (decision
// 26): policy check says so and points at the host entity, rather than
// that the CIDR overlaps the containers' network. A wider CIDR holding it
// gets no such warning: the rest of it is matched.
func TestCheckWarnsAtCIDRThatIsAHostAddress(t *testing.T) {
	testenv.RequireRoot(t)
	bin := buildMembrane(t)
	ns := testenv.NewNetNS(t, "mtck-")
	ns.MustExec(t, "ip", "link", "add", "br-mthost", "type", "bridge")
	ns.MustExec(t, "ip", "addr", "add", "172.31.251.1/24", "dev", "br-mthost")
	ns.MustExec(t, "ip", "link", "add", "mtup", "type", "bridge") // no container bridge's name
	ns.MustExec(t, "ip", "addr", "add", "198.51.100.7/24", "dev", "mtup")
	file := filepath.Join(t.TempDir(), "p.hcl")
	writePolicy(t, file, `policy "x" {
  selector = "app=x"
  egress {
    to_cidr = ["172.31.251.1/32", "198.51.100.7", "198.51.100.0/24", "172.31.251.0/25"]
    ports   = ["8080/tcp"]
  }
}
`)
	var stdout, stderr bytes.Buffer
	cmd := ns.Command(bin, "policy", "check", file)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %s%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		file + `:4:16: warning: CIDR "172.31.251.1/32" is an address of this host (br-mthost): CIDR rules never match the host`,
		file + `:4:35: warning: CIDR "198.51.100.7" is an address of this host (mtup): CIDR rules never match the host`,
		file + `:4:70: warning: CIDR "172.31.251.0/25" overlaps container network 172.31.251.0/24 (br-mthost)`,
		`to_entities = ["host"]`,
		"1 policy, 1 rule in 1 file: valid (3 warnings)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// A selector requirement on a label that does not count for identity and
// selection by default (container.name, the volatile Compose labels) can
// never select an endpoint, or always holds: policy check warns at it, so a
// deny naming a container by container.name does not pass for one that
// works. The daemon's config may bring such labels back, so it is no error.
func TestCheckWarnsAtSelectorOnUncountedLabel(t *testing.T) {
	f := filepath.Join(t.TempDir(), "p.hcl")
	writePolicy(t, f, `policy "db" {
  selector = "app=db"
  ingress_deny {
    from_endpoints = ["container.name=evil", "app=x, com.docker.compose.oneoff"]
  }
  ingress {
    from_endpoints = ["!org.opencontainers.image.version, app=y", "com.docker.compose.project=shop"]
  }
}
`)
	out, code, _ := runCLI(t, "policy", "check", f)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	for _, want := range []string{
		f + `:4:24: warning: Label "container.name" does not count for selection by default; this requirement never holds`,
		f + `:4:54: warning: Label "com.docker.compose.oneoff" does not count for selection by default; this requirement never holds`,
		f + `:7:24: warning: Label "org.opencontainers.image.version" does not count for selection by default; this requirement always holds`,
		"(3 warnings)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// A mistyped subcommand of a command group (`policy chek`) is a usage
// error, as a mistyped top-level command is: printing the group's help and
// exiting 0 would let a CI step that meant `policy check` pass unchecked.
func TestUnknownSubcommandIsAUsageError(t *testing.T) {
	for _, args := range [][]string{
		{"policy", "chek", "x.hcl"},
		{"endpoint", "lst"},
		{"identity", "bogus"},
	} {
		_, code, err := runCLI(t, args...)
		if code != 2 || err == nil || !strings.Contains(err.Error(), `unknown command "`+args[1]+`"`) {
			t.Errorf("membrane %s: exit %d, err %v; want exit 2 and unknown command", strings.Join(args, " "), code, err)
		}
	}
	if out, code, err := runCLI(t, "policy"); code != 0 || !strings.Contains(out, "Available Commands:") {
		t.Errorf("membrane policy: exit %d, err %v, output:\n%s", code, err, out)
	}
}

// A misspelt flag is a usage error with a "did you mean" for the flag
// meant, as a misspelt command is; --format and --output, which the
// commands do not share, point at each other.
func TestUnknownFlagSuggestsTheFlagMeant(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"policy", "trace", "--from-label", "app=a"}, "did you mean --from-labels?"},
		{[]string{"policy", "trace", "--polices", "x"}, "did you mean --policies?"},
		{[]string{"policy", "trace", "--icmp6", "8"}, "did you mean --icmp or --icmpv6?"},
		{[]string{"policy", "check", "--fromat", "json", "x"}, "did you mean --format?"},
		{[]string{"policy", "check", "-o", "json", "x"}, "did you mean --format?"},
		{[]string{"status", "--format", "json"}, "did you mean --output (-o)?"},
		{[]string{"observe", "--folow"}, "did you mean --follow?"},
		{[]string{"status", "--sockt", "/x"}, "did you mean --socket?"},
		// Two edits of characters, though four of bytes.
		{[]string{"policy", "trace", "--pöört", "80/tcp"}, "did you mean --port?"},
	} {
		_, code, err := runCLI(t, tc.args...)
		if code != 2 || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("membrane %s: exit %d, err %v; want exit 2 and %q", strings.Join(tc.args, " "), code, err, tc.want)
		}
	}
	for _, args := range [][]string{
		{"policy", "trace", "--zzzzzz"},
		// Three edits from --port and --socket: too far.
		{"policy", "trace", "--poxyz", "1"},
		{"status", "--xxxket", "/x"},
	} {
		if _, code, err := runCLI(t, args...); code != 2 || strings.Contains(err.Error(), "did you mean") {
			t.Errorf("membrane %s: exit %d, err %v; want exit 2 and no suggestion", strings.Join(args, " "), code, err)
		}
	}
}

// buildMembrane builds the membrane binary for a test that runs it as a
// user would, and returns its path.
func buildMembrane(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "membrane")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runBinary runs the built binary with args and returns its standard
// output, standard error and exit status.
func runBinary(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

// A flag that names its ICMP family is not offered the other family's
// flag: --icmpv4 is one letter from --icmpv6, but it means --icmp, and
// --icmpv6 8 would trace ICMPv6 type 8.
func TestUnknownFlagSuggestsNoOtherFamily(t *testing.T) {
	bin := buildMembrane(t)
	_, stderr, code := runBinary(t, bin, "policy", "trace", "--icmpv4", "8")
	if code != 2 || !strings.Contains(stderr, "unknown flag: --icmpv4; did you mean --icmp?") {
		t.Errorf("exit %d, stderr %q; want exit 2 and a suggestion of --icmp alone", code, stderr)
	}
}

// A file that membraned would not load from its policy directory is not
// passed over in silence: a policy file written "web.HCL" in a directory
// is skipped with a note saying why (the daemon reads *.hcl in lower case
// only, and would enforce nothing of it), and one named on the command
// line that the daemon would skip (hidden, or not *.hcl) is checked with
// a note that membraned would not load it.
func TestCheckNotesFilesTheDaemonWouldNotLoad(t *testing.T) {
	dir := t.TempDir()
	pol := "policy \"%s\" {\n  selector = \"app=%s\"\n  ingress {\n    ports = [\"80/tcp\"]\n  }\n}\n"
	writePolicy(t, filepath.Join(dir, "a.hcl"), strings.ReplaceAll(pol, "%s", "a"))
	writePolicy(t, filepath.Join(dir, "web.HCL"), strings.ReplaceAll(pol, "%s", "web"))
	out, code, _ := runCLI(t, "policy", "check", dir)
	if code != 0 || !strings.Contains(out, "skipped "+filepath.Join(dir, "web.HCL")+": membraned reads only names ending in .hcl (lower case)") {
		t.Errorf("directory with web.HCL: exit %d, output:\n%s", code, out)
	}
	for _, name := range []string{".web.hcl", "web.hcl.disabled", "web.HCL"} {
		p := filepath.Join(dir, "named", name)
		writePolicy(t, p, strings.ReplaceAll(pol, "%s", "web"))
		out, code, _ := runCLI(t, "policy", "check", p)
		if code != 0 || !strings.Contains(out, "note: "+p+": membraned would not load this file from its policy directory") {
			t.Errorf("%s named: exit %d, output:\n%s", name, code, out)
		}
	}
	// With --format json, standard output stays the array of diagnostics
	// alone, and the notes go to standard error.
	out, stderr, code, _ := runCLIStderr(t, "policy", "check", "--format", "json", dir)
	if code != 0 || strings.TrimSpace(out) != "[]" || !strings.Contains(stderr, "skipped "+filepath.Join(dir, "web.HCL")+": ") {
		t.Errorf("directory with web.HCL, --format json: exit %d, stdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	// A plain name gets no note.
	if out, _, _ := runCLI(t, "policy", "check", filepath.Join(dir, "a.hcl")); strings.Contains(out, "note:") {
		t.Errorf("a.hcl named: %s", out)
	}
}

// The specification's own example, as written there, is a valid policy: its
// ingress block holds http beside "9000-9100/udp" and "53", and semantics 7
// judges the TCP connections such a rule admits (8080/tcp, 53/tcp) by the
// http blocks and lets UDP and SCTP through unjudged; policy check warns
// about the ports whose other protocols the http blocks do not judge.
func TestCheckAcceptsTheSpecificationExampleAsWritten(t *testing.T) {
	bin := buildMembrane(t)
	file := testdata + "/spec-literal/api.hcl"
	stdout, stderr, code := runBinary(t, bin, "policy", "check", file)
	if code != 0 {
		t.Fatalf("exit %d, stdout:\n%s\nstderr: %s", code, stdout, stderr)
	}
	for _, want := range []string{
		file + `:13:35: warning: Port "9000-9100/udp" is not TCP`,
		file + `:13:52: warning: Port "53" is not TCP-only`,
		"1 policy, 2 rules in 1 file: valid (", // more warnings where a bridge of this host is in 10.0.0.0/8
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}

	trace := func(args ...string) traceJSON {
		t.Helper()
		args = append([]string{"policy", "trace", "--policies", file, "--from-labels", "app=frontend", "--to-labels", "app=api", "--format", "json"}, args...)
		stdout, stderr, code := runBinary(t, bin, args...)
		var j traceJSON
		if code != 0 || json.Unmarshal([]byte(stdout), &j) != nil {
			t.Fatalf("%q: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
		return j
	}
	if j := trace("--port", "9050/udp"); j.Verdict != "allowed" || j.L7 != nil {
		t.Errorf("UDP 9050: %+v, want allowed without L7", j)
	}
	req := []string{"--http-path", "/api/v1/x", "--http-host", "api.example.com", "--http-header", "X-Tenant=acme"}
	if j := trace(append([]string{"--port", "53/tcp", "--http-method", "GET"}, req...)...); j.Verdict != "allowed" || j.L7 == nil || j.L7.HTTP == nil || j.L7.HTTP.Verdict != "allowed" {
		t.Errorf("GET on TCP 53: %+v, want the request allowed", j)
	}
	if j := trace(append([]string{"--port", "53/tcp", "--http-method", "DELETE"}, req...)...); j.L7 == nil || j.L7.HTTP == nil || j.L7.HTTP.Verdict != "403" {
		t.Errorf("DELETE on TCP 53: %+v, want 403", j)
	}
}

// An argument a command does not take is a usage error (exit 2) that says
// so and where to look, not cobra's "unknown command" (which reads as a
// misspelt subcommand of a command that has none) or "accepts 1 arg(s),
// received 0"; nothing goes to standard output.
func TestStrayOrMissingArgumentsSayWhatTheCommandTakes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "extra"}, `"membrane status" takes no arguments, got "extra"` + "\nSee 'membrane status --help'."},
		{[]string{"version", "x"}, `"membrane version" takes no arguments, got "x"`},
		{[]string{"identity", "list", "x"}, `"membrane identity list" takes no arguments, got "x"`},
		{[]string{"endpoint", "list", "x"}, `"membrane endpoint list" takes no arguments`},
		{[]string{"observe", "x"}, `"membrane observe" takes no arguments`},
		{[]string{"policy", "show", "x"}, `"membrane policy show" takes no arguments`},
		{[]string{"policy", "reload", "x"}, `"membrane policy reload" takes no arguments`},
		{[]string{"policy", "trace", "--from-entity", "host", "--to-entity", "world", "x"}, `"membrane policy trace" takes no arguments, got "x" (a flag's value with blanks needs quotes: --to-labels "app=web, tier=front")`},
		{[]string{"endpoint", "get"}, `"membrane endpoint get" takes one endpoint: its id, container name or container id (got none)` + "\nSee 'membrane endpoint get --help'."},
		{[]string{"endpoint", "get", "a", "b"}, `"membrane endpoint get" takes one endpoint: its id, container name or container id (got 2: "a" "b")`},
	} {
		out, _, code, err := runCLIStderr(t, tc.args...)
		if code != 2 || out != "" || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("membrane %s: exit %d, stdout %q, error %v; want exit 2 and %q", strings.Join(tc.args, " "), code, out, err, tc.want)
		}
	}
}

// `membrane help TOPIC` and `membrane completion SHELL` with a topic or
// shell that does not exist are usage errors (exit 2) like an unknown
// command; they exited 0 (help after "Unknown help topic" on stderr,
// completion with its help on stdout, which a script redirecting it into
// a completion file would take for the script). An unknown command of the
// root is told as the group commands tell theirs.
func TestUnknownHelpTopicCompletionShellAndCommandExitTwo(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"help", "bogus"}, `unknown help topic "bogus"` + "\nSee 'membrane --help'."},
		{[]string{"help", "policy", "chek"}, `unknown help topic "policy chek"`},
		{[]string{"completion", "tcsh"}, `unknown command "tcsh" for "membrane completion"`},
		{[]string{"statsu"}, `unknown command "statsu" for "membrane"; did you mean "status"?` + "\nSee 'membrane --help'."},
	} {
		out, _, code, err := runCLIStderr(t, tc.args...)
		if code != 2 || out != "" || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("membrane %s: exit %d, stdout %.80q, error %v; want exit 2 and %q", strings.Join(tc.args, " "), code, out, err, tc.want)
		}
	}
	for _, args := range [][]string{{"help"}, {"help", "policy", "check"}, {"completion"}, {}} {
		if out, _, code, err := runCLIStderr(t, args...); code != 0 || out == "" {
			t.Errorf("membrane %s: exit %d, %v, stdout %.80q", strings.Join(args, " "), code, err, out)
		}
	}
}

// A flag value of the wrong type is told in words, not as the strconv
// error inside pflag's ("strconv.ParseInt: parsing \"x\": invalid syntax").
func TestFlagValueOfTheWrongTypeIsToldInWords(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"observe", "--last", "x"}, `invalid argument "x" for "--last" flag: want a whole number` + "\nSee 'membrane observe --help'."},
		{[]string{"observe", "--last", "99999999999999999999"}, `invalid argument "99999999999999999999" for "--last" flag: out of range`},
		{[]string{"observe", "--follow=maybe"}, `invalid argument "maybe" for "-f, --follow" flag: want true or false`},
	} {
		out, _, code, err := runCLIStderr(t, tc.args...)
		if code != 2 || out != "" || err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "strconv") {
			t.Errorf("membrane %s: exit %d, stdout %q, error %v; want exit 2 and %q", strings.Join(tc.args, " "), code, out, err, tc.want)
		}
	}
}

// TestCheckTextEscapesControlCharactersInNames: `policy check` reviews
// trees that anyone may have written, so a control character in a file or
// directory name reaches the terminal escaped, in the skipped-file notes
// and the summary lines as in the diagnostics (decision 92).
func TestCheckTextEscapesControlCharactersInNames(t *testing.T) {
	root := t.TempDir()
	ok := "policy \"api\" {\n  selector = \"app=api\"\n}\n"
	writePolicy(t, filepath.Join(root, "s\x1b[2K", "api.hcl"), ok)
	writePolicy(t, filepath.Join(root, "w\x1b[31m.nomad.hcl"), "job {")
	writePolicy(t, filepath.Join(root, "q\x07.HCL"), ok)
	writePolicy(t, filepath.Join(root, "b\x1b]0;x\x07.hcl"), "junk")
	out, stderr, code, _ := runCLIStderr(t, "policy", "check", root)
	if code != 1 {
		t.Fatalf("exit %d, output:\n%s%s", code, out, stderr)
	}
	for i, r := range out + stderr {
		if r < ' ' && r != '\n' && r != '\t' {
			t.Fatalf("control character %q at %d in:\n%q", r, i, out+stderr)
		}
	}
	for _, s := range []string{
		"skipped " + filepath.Join(root, `w\x1b[31m.nomad.hcl`) + ": ",
		"skipped " + filepath.Join(root, `q\x07.HCL`) + ": ",
		filepath.Join(root, `b\x1b]0;x\x07.hcl`) + ":1:1: error: ",
		root + ": 1 error, 0 warnings in 1 file: invalid\n",
		filepath.Join(root, `s\x1b[2K`) + ": 1 policy, 0 rules in 1 file: valid\n",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("no %q in:\n%s", s, out)
		}
	}
}
