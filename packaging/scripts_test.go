package packaging

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// The maintainer scripts of the built .deb, run with the arguments dpkg
// passes them in the order dpkg runs them, against stand-ins for systemd
// (systemctl, deb-systemd-helper, deb-systemd-invoke) and membraned that
// keep three facts in a state directory: the unit is enabled, the daemon is
// active, the datapath is pinned (a started daemon pins it; only
// `membraned --cleanup` takes it down, as a stop keeps it). The scripts run
// in a mount namespace of their own where /run (with /run/systemd/system, as
// under systemd), /var/lib and /sys/fs/bpf are empty tmpfs: nothing they
// write or remove is this machine's.

// scriptStubs are the stand-ins, as shell scripts; $STATE is the state
// directory, $STATE/calls logs every call.
var scriptStubs = map[string]string{
	"systemctl": `case " $* " in
*" daemon-reload "*) ;;
*" preset "*) touch "$STATE/enabled" ;; # Debian's default preset enables
*" is-enabled "*) [ -e "$STATE/enabled" ] || exit 1 ;;
*" disable --now "*) rm -f "$STATE/enabled" "$STATE/active" ;;
*" start "*) touch "$STATE/active" "$STATE/pinned" ;;
*" try-restart "*) [ ! -e "$STATE/active" ] || touch "$STATE/pinned" ;;
*) echo "systemctl: unexpected $*" >&2; exit 1 ;;
esac`,
	"deb-systemd-helper": `case "$1" in --quiet) shift ;; esac
case "$1" in
enable) touch "$STATE/enabled" ;;
was-enabled | is-enabled) [ -e "$STATE/enabled" ] || exit 1 ;;
purge) rm -f "$STATE/enabled" ;;
mask | unmask | update-state) ;;
*) echo "deb-systemd-helper: unexpected $*" >&2; exit 1 ;;
esac`,
	// systemctl's semantics: restart starts a stopped unit, try-restart
	// does not.
	"deb-systemd-invoke": `case "$1" in
start | restart) touch "$STATE/active" "$STATE/pinned" ;;
try-restart) [ ! -e "$STATE/active" ] || touch "$STATE/pinned" ;;
stop) rm -f "$STATE/active" ;;
*) echo "deb-systemd-invoke: unexpected $*" >&2; exit 1 ;;
esac`,
	"membraned": `case " $* " in
*" --cleanup "*) rm -f "$STATE/pinned" ;;
*) echo "membraned: unexpected $*" >&2; exit 1 ;;
esac`,
	"getent": `exit 0`,
}

// debScripts runs steps (each a maintainer script and its arguments, as
// "prerm remove") of the built .deb and returns the state after each:
// "enabled active pinned", with "-" for a fact that does not hold.
func debScripts(t *testing.T, steps ...string) []string {
	t.Helper()
	testenv.RequireBinary(t, "dpkg-deb")
	res := testPackages(t)
	ctrl := t.TempDir()
	run(t, "dpkg-deb", "--control", res.Deb, ctrl)
	return runScripts(t, ctrl, steps)
}

// rpmScripts is debScripts for the built .rpm: steps name its scriptlets
// as rpm does (pre, post, preun, postun) with rpm's count as $1.
func rpmScripts(t *testing.T, steps ...string) []string {
	t.Helper()
	testenv.RequireBinary(t, "rpm")
	res := testPackages(t)
	dir := t.TempDir()
	for name, tag := range map[string]string{"pre": "PREIN", "post": "POSTIN", "preun": "PREUN", "postun": "POSTUN"} {
		body := run(t, "rpm", "-qp", "--qf", "%{"+tag+"}", res.RPM)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return runScripts(t, dir, steps)
}

// runScripts runs steps of the scripts in dir; see debScripts.
func runScripts(t *testing.T, ctrl string, steps []string) []string {
	t.Helper()
	testenv.RequireBinary(t, "unshare")
	if os.Geteuid() != 0 {
		testenv.Skip(t, "mounting tmpfs in a mount namespace of its own needs root")
	}
	dir := t.TempDir()
	stubs, state := filepath.Join(dir, "stubs"), filepath.Join(dir, "state")
	for _, d := range []string{stubs, state} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range scriptStubs {
		body = "#!/bin/sh\necho " + name + ` "$@" >> "$STATE/calls"` + "\n" + body + "\n"
		if err := os.WriteFile(filepath.Join(stubs, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var driver strings.Builder
	driver.WriteString("set -e\nfor d in /run /var/lib /sys/fs/bpf; do mount -t tmpfs tmpfs $d; done\nmkdir -p /run/systemd/system\n")
	driver.WriteString(`fact() { if [ -e "$STATE/$1" ]; then printf %s "$1"; else printf -; fi; }` + "\n")
	for _, s := range steps {
		f := strings.Fields(s)
		fmt.Fprintf(&driver, "sh %s/%s %s\n", ctrl, f[0], strings.Join(f[1:], " "))
		driver.WriteString(`echo "$(fact enabled) $(fact active) $(fact pinned)"` + "\n")
	}
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", driver.String())
	cmd.Env = append(os.Environ(), "STATE="+state, "PATH="+stubs+":"+os.Getenv("PATH"))
	out, err := cmd.Output()
	calls, _ := os.ReadFile(filepath.Join(state, "calls"))
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("maintainer scripts %q: %v\n%s%s\ncalls:\n%s", steps, err, out, stderr, calls)
	}
	got := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(got) != len(steps) {
		t.Fatalf("maintainer scripts %q printed %q", steps, out)
	}
	t.Logf("steps %q\nstates %q\ncalls:\n%s", steps, got, calls)
	return got
}

const upState = "enabled active pinned"

func TestDebScriptsInstallStartsAndUpgradeKeepsTheDatapath(t *testing.T) {
	v, _ := PackageVersion(testVersion)
	got := debScripts(t,
		"postinst configure",
		"prerm upgrade 9.9.9", "postrm upgrade 9.9.9", "postinst configure "+v,
	)
	for i, s := range got {
		if s != upState {
			t.Errorf("step %d: %q, want %q (protection must not stop on an upgrade)", i, s, upState)
		}
	}
}

// A package removed but not purged (dpkg -r) and installed again is
// configured with the version it had ("postinst configure 1.0"), as an
// upgrade is; the removal stopped the daemon and took the datapath down, so
// a try-restart would leave the host without protection until a reboot.
func TestDebReinstallAfterRemoveStartsTheDaemon(t *testing.T) {
	v, _ := PackageVersion(testVersion)
	got := debScripts(t,
		"postinst configure",
		"prerm remove", "postrm remove",
		"postinst configure "+v,
	)
	if got[2] != "enabled - -" {
		t.Errorf("after remove: %q, want the daemon stopped and the datapath down", got[2])
	}
	if got[3] != upState {
		t.Errorf("reinstalled after remove: %q, want %q", got[3], upState)
	}
}

// rpm upgrades in this order: the new package's %pre and %post ($1 = 2),
// then the old one's %preun and %postun ($1 = 1) once its files are gone;
// protection must hold throughout, and the old %postun restarts the daemon.
// An erase ($1 = 0) takes the datapath down; an install starts it.
func TestRPMScriptsInstallUpgradeErase(t *testing.T) {
	got := rpmScripts(t,
		"pre 1", "post 1",
		"pre 2", "post 2", "preun 1", "postun 1",
		"preun 0", "postun 0",
	)
	want := []string{"- - -", upState, upState, upState, upState, upState, "- - -", "- - -"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("step %d: %q, want %q", i, got[i], want[i])
		}
	}
}

// dpkg deconfigures the package when a package it depends on (nftables,
// say) is removed for a conflicting one, and configures it again once the
// dependency is back: that is no removal, and protection must not stop
// (dh_installsystemd's prerm stops a unit on remove only).
func TestDebDeconfigureKeepsTheDatapath(t *testing.T) {
	v, _ := PackageVersion(testVersion)
	got := debScripts(t,
		"postinst configure",
		"prerm deconfigure in-favour iptables-nft 1.0 removing nftables 1.0.6",
		"postinst configure "+v,
	)
	for i, s := range got {
		if s != upState {
			t.Errorf("step %d: %q, want %q", i, s, upState)
		}
	}
}

// The removal script runs `membraned --cleanup --config
// /etc/membrane/membrane.hcl`. A configuration membraned cannot read (an
// edit with a typo that the admin gave up on, and removes the package) must
// not leave the datapath enforcing with no daemon: cleanup then takes down
// the default pin directory. Run in mount and network namespaces of its own
// (a bpffs of its own at /sys/fs/bpf, a tmpfs at /run): the L7 cleanup
// removes host-wide nftables and routing state.
func TestCleanupWithAnInvalidConfigTakesTheDatapathDown(t *testing.T) {
	testenv.RequireBinary(t, "unshare")
	if os.Geteuid() != 0 {
		testenv.Skip(t, "mounting bpffs in a mount namespace of its own needs root")
	}
	daemon := filepath.Join(testBinaries(t), "membraned")
	dir := t.TempDir()
	for name, cfg := range map[string]string{
		"invalid": "enforcement = \"sometimes\"\n",
		"missing": "",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name+".hcl")
			if cfg != "" {
				if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			script := `set -e
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /run
mkdir -p /sys/fs/bpf/membrane/links
"$0" --cleanup --config "$1" || echo "exit $?"
if [ -e /sys/fs/bpf/membrane ]; then echo "pins left"; fi`
			out, err := exec.Command("unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script, daemon, path).CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if strings.Contains(string(out), "pins left") || strings.Contains(string(out), "exit ") {
				t.Fatalf("membraned --cleanup with a config it cannot read left the datapath:\n%s", out)
			}
			t.Logf("%s", out)
		})
	}
}
