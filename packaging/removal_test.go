package packaging

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// A removal must leave nothing enforcing: TestRemovalLeavesNoProgramBehind
// runs the real membraned, as the unit runs it, on a bridge and a veth
// whose other end is a container's (network namespaces the test makes), in
// each attach mode; once it has attached its programs to the veth, the
// packages' real removal scripts run as dpkg runs them on `apt remove`,
// then `apt purge`, and as rpm runs them on `dnf remove`, with stand-ins
// for systemd whose stop ends that daemon.
// After the removal no program of Membrane may be on the veth or the
// bridge (neither a tcx link nor a tc filter) and the container must reach
// the host; after the purge no pin may be left (but where the
// configuration that named them is gone).
//
// The daemon, its bpffs and the scripts run in a mount namespace of their
// own (ip netns exec, then unshare) in the test's "host" namespace: a bpffs
// of their own at /sys/fs/bpf, tmpfs at /run and /var/lib, and an overlay
// on /etc holding /etc/membrane. The script waits on its stdin while the
// test looks at the interfaces, since its pins die with its bpffs.
func TestRemovalLeavesNoProgramBehind(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "unshare")
	testenv.RequireBinary(t, "dpkg-deb")
	bin := testBinaries(t)
	res := testPackages(t)
	deb := t.TempDir()
	run(t, "dpkg-deb", "--control", res.Deb, deb)
	rpm := ""
	if _, err := exec.LookPath("rpm"); err == nil {
		rpm = t.TempDir()
		for name, tag := range map[string]string{"preun": "PREUN", "postun": "POSTUN"} {
			body := run(t, "rpm", "-qp", "--qf", "%{"+tag+"}", res.RPM)
			if err := os.WriteFile(filepath.Join(rpm, name), []byte(body), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	// What dpkg runs on `apt remove` and then `apt purge` (dpkg deletes
	// the conffiles before postrm purge), and rpm on `dnf remove` (its
	// files, the configuration among them, go between %preun and %postun).
	pkgs := []struct{ name, dir, remove, purge string }{
		{"deb", deb, `sh "$CTRL/prerm" remove; sh "$CTRL/postrm" remove`, `rm -rf /etc/membrane; sh "$CTRL/postrm" purge`},
		{"rpm", rpm, `sh "$CTRL/preun" 0; rm -rf /etc/membrane; sh "$CTRL/postun" 0`, `:`},
	}

	for _, pkg := range pkgs {
		for _, mode := range []string{"tc", "tcx"} {
			for _, c := range []removalCase{
				{name: "purge", pins: "/sys/fs/bpf/custom"},
				{name: "stopped-then-purge", pins: "/sys/fs/bpf/custom", stopFirst: true},
				{name: "invalid-config", pins: "/sys/fs/bpf/custom",
					before: `echo 'enforcement = "sometimes"' >>/etc/membrane/membrane.hcl`},
				{name: "deleted-config", pins: "/sys/fs/bpf/custom",
					before: `rm /etc/membrane/membrane.hcl`, pinsLeft: true},
				{name: "failed-cleanup", failCleanup: true},
			} {
				t.Run(pkg.name+"/"+mode+"/"+c.name, func(t *testing.T) {
					cfg := fmt.Sprintf(`attach  = %q
bridges = ["mbr0"]
runtime "docker" {
  enabled = false
}
runtime "containerd" {
  enabled = false
}
metrics {
  listen = ""
}
`, mode)
					if c.pins != "" {
						cfg += fmt.Sprintf("bpffs_dir = %q\n", c.pins)
					}
					if pkg.dir == "" {
						testenv.RequireBinary(t, "rpm")
					}
					removal(t, bin, pkg.dir, pkg.remove, pkg.purge, cfg, c)
				})
			}
		}
	}
}

// removalCase is one case of TestRemovalLeavesNoProgramBehind.
type removalCase struct {
	name string
	// pins is the configured bpffs_dir ("" for the default).
	pins string
	// before runs before the removal, in the script.
	before string
	// stopFirst stops the daemon (systemctl stop) before the removal; the
	// datapath must go on enforcing until the removal.
	stopFirst bool
	// failCleanup puts a membraned whose --cleanup fails first on the
	// scripts' PATH (a cleanup that went wrong: the scripts' fallback is
	// all that is left).
	failCleanup bool
	// pinsLeft: the purge may leave pins (whose programs are off every
	// interface) in the bpffs.
	pinsLeft bool
}

// removal runs one case of TestRemovalLeavesNoProgramBehind: remove and
// purge are the shell commands that run the scripts in ctrl.
func removal(t *testing.T, bin, ctrl, remove, purge, cfg string, c removalCase) {
	pins, failCleanup, pinsLeft := c.pins, c.failCleanup, c.pinsLeft
	host := testenv.NewNetNS(t, "rmh")
	ctr := testenv.NewNetNS(t, "rmc")
	host.MustExec(t, "ip", "link", "add", "mbr0", "type", "bridge")
	host.MustExec(t, "ip", "addr", "add", "10.77.0.1/24", "dev", "mbr0")
	host.MustExec(t, "ip", "link", "set", "mbr0", "up")
	host.MustExec(t, "ip", "link", "add", "vh0", "type", "veth", "peer", "name", "eth0", "netns", ctr.Name)
	host.MustExec(t, "ip", "link", "set", "vh0", "master", "mbr0", "up")
	ctr.MustExec(t, "ip", "addr", "add", "10.77.0.2/24", "dev", "eth0")
	ctr.MustExec(t, "ip", "link", "set", "eth0", "up")
	var veth, bridge int
	if err := host.Do(func() error {
		for name, idx := range map[string]*int{"vh0": &veth, "mbr0": &bridge} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			*idx = l.Attrs().Index
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	work := t.TempDir()
	stubs, state := filepath.Join(work, "stubs"), filepath.Join(work, "state")
	failing := filepath.Join(work, "failing")
	for _, d := range []string{stubs, state, failing} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The stand-ins of TestDebScripts*, but for the daemon: a stop ends the
	// real one (started by the script below) and waits until it is gone.
	const stop = `p=$(cat "$STATE/pid"); kill -TERM "$p"; while [ -e "/proc/$p" ]; do sleep 0.1; done`
	for name, body := range scriptStubs {
		switch name {
		case "membraned":
			continue
		case "deb-systemd-invoke":
			body = `case "$1" in
stop) ` + stop + ` ;;
*) echo "deb-systemd-invoke: unexpected $*" >&2; exit 1 ;;
esac`
		case "systemctl":
			body = `case " $* " in
*" disable --now "*) ` + stop + ` ;;
*" daemon-reload "*) ;;
*) echo "systemctl: unexpected $*" >&2; exit 1 ;;
esac`
		}
		writeScript(t, filepath.Join(stubs, name), name, body)
	}
	writeScript(t, filepath.Join(failing, "membraned"), "membraned", `echo "membraned: cleanup: something went wrong" >&2; exit 1`)
	if err := os.WriteFile(filepath.Join(work, "membrane.hcl"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if pins == "" {
		pins = "/sys/fs/bpf/membrane"
	}
	path := stubs + ":" + bin + ":" + os.Getenv("PATH")
	if failCleanup {
		path = failing + ":" + path
	}

	script := fmt.Sprintf(`set -e
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/lib
mkdir -p "$WORK/upper" "$WORK/ovl"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$WORK/upper,workdir=$WORK/ovl" /etc
mkdir -p /etc/membrane/policies.d /run/systemd/system
cp "$WORK/membrane.hcl" /etc/membrane/membrane.hcl
# Not holding the test's pipes: a script that fails ends.
( "$BIN/membraned" --config /etc/membrane/membrane.hcl >"$WORK/membraned.log" 2>&1 & echo $! >"$STATE/pid"; wait ) </dev/null >/dev/null 2>&1 &
trap 'kill "$(cat "$STATE/pid")" 2>/dev/null || :' EXIT
i=0
until [ -n "$(ls %[1]s/links/ 2>/dev/null | grep "_%[2]d_egress$")" ]; do
	i=$((i + 1))
	p=$(cat "$STATE/pid" 2>/dev/null) || p=
	if [ $i -gt 600 ] || { [ -n "$p" ] && ! [ -e "/proc/$p" ]; }; then
		echo "membraned did not attach to vh0:"; cat "$WORK/membraned.log"; exit 1
	fi
	sleep 0.1
done
echo attached
read _
if [ -n "$STOP_FIRST" ]; then
	p=$(cat "$STATE/pid"); kill -TERM "$p"; while [ -e "/proc/$p" ]; do sleep 0.1; done
	echo stopped
	read _
fi
%[3]s
PATH="$SCRIPTS_PATH"
%[4]s
echo removed
read _
%[5]s
for d in /sys/fs/bpf/membrane %[1]s; do
	if [ -e "$d" ]; then echo "pins left: $(find "$d" | tr '\n' ' ')"; fi
done
echo purged
read _
`, pins, veth, c.before, remove, purge)
	cmd := exec.Command("ip", "netns", "exec", host.Name, "unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "WORK="+work, "STATE="+state, "BIN="+bin, "CTRL="+ctrl, "SCRIPTS_PATH="+path)
	if c.stopFirst {
		cmd.Env = append(cmd.Env, "STOP_FIRST=1")
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	lines := bufio.NewScanner(outPipe)
	until := func(marker string) bool {
		for lines.Scan() {
			out.WriteString(lines.Text() + "\n")
			if lines.Text() == marker {
				return true
			}
		}
		return false
	}
	finish := func() {
		in.Close()
		_, _ = io.Copy(io.Discard, outPipe)
		if err := cmd.Wait(); err != nil {
			log, _ := os.ReadFile(filepath.Join(work, "membraned.log"))
			t.Errorf("script: %v\n%s%s\nmembraned's log:\n%s", err, out.String(), stderr.String(), log)
		}
	}

	if !until("attached") {
		finish()
		t.FailNow()
	}
	progs := programs(t, host, veth, bridge)
	if len(progs) == 0 {
		t.Errorf("membraned attached to vh0 (its pins say) but no program is on it")
	}
	t.Logf("before removal: %s; %s", strings.Join(progs, "; "), strings.Join(proxyRouting(t, host), "; "))
	if _, err := exec.LookPath("nft"); err == nil {
		if out, err := host.Exec("nft", "list", "table", "inet", "membrane_l7"); err != nil {
			t.Errorf("membraned made no nftables table for its L7 proxy: %v: %s", err, out)
		}
	}
	fmt.Fprintln(in)

	if c.stopFirst {
		// membraned.service's stop: the pinned datapath stays and keeps
		// judging (the unknown container's traffic is dropped).
		if !until("stopped") {
			finish()
			t.FailNow()
		}
		if after := programs(t, host, veth, bridge); strings.Join(after, "; ") != strings.Join(progs, "; ") {
			t.Errorf("a stop changed the programs on the interfaces:\nbefore: %s\nafter:  %s", strings.Join(progs, "; "), strings.Join(after, "; "))
		}
		unreachable(t, host, ctr)
		fmt.Fprintln(in)
	}

	if !until("removed") {
		finish()
		t.FailNow()
	}
	if left := programs(t, host, veth, bridge); len(left) > 0 {
		t.Errorf("after the removal, Membrane's programs are still on the interfaces: %s", strings.Join(left, "; "))
	}
	if left := proxyRouting(t, host); len(left) > 0 {
		t.Errorf("after the removal, the L7 proxy's policy routing is still there: %s", strings.Join(left, "; "))
	}
	if out, err := host.Exec("nft", "list", "table", "inet", "membrane_l7"); err == nil && nftFound() {
		t.Errorf("after the removal, the L7 proxy's nftables table is still there:\n%s", out)
	}
	if v := strings.TrimSpace(host.MustExec(t, "cat", "/proc/sys/net/ipv4/tcp_early_demux")); v != "1" {
		t.Errorf("after the removal, net.ipv4.tcp_early_demux is %s; the namespace had 1 before membraned set it to 0", v)
	}
	reach(t, host, ctr)
	fmt.Fprintln(in)

	if !until("purged") {
		finish()
		t.FailNow()
	}
	if strings.Contains(out.String(), "pins left") && !pinsLeft {
		t.Errorf("the purge left pins:\n%s", out.String())
	}
	fmt.Fprintln(in)
	finish()
	t.Logf("script:\n%s%s", out.String(), stderr.String())
}

func writeScript(t *testing.T, path, name, body string) {
	t.Helper()
	body = "#!/bin/sh\necho " + name + ` "$@" >> "$STATE/calls"` + "\n" + body + "\n"
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
}

// programs lists what is attached to the veth (both hooks) and the bridge
// (ingress) in ns: tcx programs and tc filters. The namespace is the
// test's, so whatever is there is Membrane's.
func programs(t *testing.T, ns *testenv.NetNS, ifindexes ...int) []string {
	t.Helper()
	var found []string
	err := ns.Do(func() error {
		for _, idx := range ifindexes {
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: at})
				if err != nil {
					return fmt.Errorf("querying tcx programs on %d: %w", idx, err)
				}
				for _, p := range res.Programs {
					name := ""
					if prog, err := ebpf.NewProgramFromID(p.ID); err == nil {
						if info, err := prog.Info(); err == nil {
							name = info.Name
						}
						prog.Close()
					}
					found = append(found, fmt.Sprintf("tcx %s program %d %s on %d", at, p.ID, name, idx))
				}
			}
			l, err := netlink.LinkByIndex(idx)
			if err != nil {
				return err
			}
			for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
				fs, err := netlink.FilterList(l, parent)
				if err != nil && !errors.Is(err, os.ErrNotExist) {
					// No clsact qdisc: no filter.
					continue
				}
				for _, f := range fs {
					if bf, ok := f.(*netlink.BpfFilter); ok {
						found = append(found, fmt.Sprintf("tc filter %s (pref %#x) on %s", bf.Name, bf.Priority, l.Attrs().Name))
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// dialHost connects from the container to a listener on the host's bridge
// address, waiting at most timeout.
func dialHost(t *testing.T, host, ctr *testenv.NetNS, timeout time.Duration) error {
	t.Helper()
	var ln net.Listener
	if err := host.Do(func() (err error) { ln, err = net.Listen("tcp4", "10.77.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ctr.Do(func() error {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), timeout)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// reach checks that the container reaches the host: no program judges the
// veth any more.
func reach(t *testing.T, host, ctr *testenv.NetNS) {
	t.Helper()
	if err := dialHost(t, host, ctr, 10*time.Second); err != nil {
		t.Errorf("after the removal the container cannot reach the host: %v", err)
	}
}

// proxyRouting lists the L7 proxy's policy routing in ns: the rules that
// look up its table (proxy.DefaultRouting, 2005) and the routes in it.
func proxyRouting(t *testing.T, ns *testenv.NetNS) []string {
	t.Helper()
	const table = 2005
	var found []string
	err := ns.Do(func() error {
		rules, err := netlink.RuleList(netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, r := range rules {
			if r.Table == table {
				found = append(found, "rule "+r.String())
			}
		}
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
			if err != nil {
				return err
			}
			for _, r := range routes {
				found = append(found, "route "+r.String())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func nftFound() bool {
	_, err := exec.LookPath("nft")
	return err == nil
}

// unreachable is reach's opposite: the container, unknown to a daemon
// without runtimes (identity init, dropped by unknown_endpoint's default),
// gets no connection to the host.
func unreachable(t *testing.T, host, ctr *testenv.NetNS) {
	t.Helper()
	if dialHost(t, host, ctr, 2*time.Second) == nil {
		t.Errorf("with membraned stopped, the unknown container connected to the host: the datapath no longer judges")
	}
}
