package packaging

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// TestDebUnderSystemd is the packaging issue's end-to-end check: a Debian 12
// rootfs boots systemd as PID 1 in a container of the host's Docker (every
// capability but CAP_SYS_RESOURCE, seccomp unconfined, host cgroups, host
// network, /sys/fs/bpf, the Docker socket and /run/docker/netns mounted), the
// .deb is installed with dpkg, and then:
//   - postinst honours policy-rc.d (no start while it says 101) and enables
//     the unit; `systemd-analyze verify` is clean;
//   - the unit reaches active and `membrane status` answers;
//   - the L7 proxy path starts inside the unit's sandbox: status shows the
//     builtin engine on the configured port, nft made table inet
//     membrane_l7, and accept_local=1 is set on the managed bridges (one
//     made after the start too);
//   - a policy dropped into /etc/membrane/policies.d is enforced between two
//     containers of the host's Docker;
//   - `systemctl restart membraned`, and an upgrade to a newer .deb, do not
//     drop an allowed established connection;
//   - each capability the unit keeps is needed (without it membraned
//     fails, stops enforcing, or runs no L7 proxy);
//   - `dpkg --purge` removes every pin and attachment (the denied client can
//     connect again; no tcx link or tc filter is left on the veth);
//   - a systemd preset that disables the unit is honoured on install.
func TestDebUnderSystemd(t *testing.T) {
	testenv.RequireDocker(t)
	start := time.Now()
	step := func(what string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), what) }
	busybox := testenv.BusyboxImage(t)
	res := testPackages(t)
	step("packages built")
	image := systemdImage(t)
	step("rootfs image ready")
	makeRootShared(t)

	id := "pkgtest-" + testenv.RandomSuffix(8)
	// The daemon pins under /sys/fs/bpf/membrane inside the container; on
	// the host that is a directory of our own, so nothing of another test or
	// daemon is touched and the purge check looks only at ours.
	bpfDir := filepath.Join("/sys/fs/bpf", id)
	if err := os.MkdirAll(bpfDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(bpfDir) })

	sys := id + "-systemd"
	docker(t, "run", "-d", "--name", sys,
		"--network", "host", "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
		"--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
		"--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
		// /proc/sys writable as on a real host (Docker mounts it read-only
		// otherwise): what stays read-only is then the unit's doing.
		"--security-opt", "systempaths=unconfined",
		"--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
		"-v", bpfDir+":/sys/fs/bpf",
		"-v", "/var/run/docker.sock:/run/docker.sock",
		"-v", "/run/docker/netns:/run/docker/netns:rslave",
		"-e", "container=docker", "--stop-signal", "SIGRTMIN+3",
		image, "/lib/systemd/systemd")
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := sh(sys, "journalctl --no-pager -u membraned | tail -n 60")
			t.Logf("membraned journal:\n%s", out)
		}
		// Take our datapath down even when the test failed half-way.
		_, _ = sh(sys, "systemctl stop membraned; membraned --cleanup")
		_ = exec.Command("docker", "rm", "-f", sys).Run()
	})
	waitFor(t, 60*time.Second, "systemd to boot", func() (bool, string) {
		out, _ := sh(sys, "systemctl is-system-running")
		s := strings.TrimSpace(out)
		return s == "running" || s == "degraded", s
	})

	step("systemd booted")

	// Install while policy-rc.d forbids starting services: the unit must be
	// enabled (preset) but not started.
	put(t, sys, "/root/membrane.deb", mustRead(t, res.Deb), "0644")
	put(t, sys, "/usr/sbin/policy-rc.d", []byte("#!/bin/sh\nexit 101\n"), "0755")
	mustSh(t, sys, "dpkg -i /root/membrane.deb")
	if out, _ := sh(sys, "systemctl is-enabled membraned"); strings.TrimSpace(out) != "enabled" {
		t.Fatalf("after install membraned is %q, want enabled", strings.TrimSpace(out))
	}
	if out, _ := sh(sys, "systemctl is-active membraned"); strings.TrimSpace(out) != "inactive" {
		t.Fatalf("membraned is %q although policy-rc.d forbade starting it", strings.TrimSpace(out))
	}
	mustSh(t, sys, "getent group membrane")
	if out, err := sh(sys, "systemd-analyze verify --man=no membraned.service"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The Envoy unit is installed for l7.envoy_unit, loadable, and left to
	// membraned to start: not enabled, not started.
	if out, _ := sh(sys, "systemctl show --property=LoadState --value membrane-envoy.service"); strings.TrimSpace(out) != "loaded" {
		t.Errorf("membrane-envoy.service is %q after install, want loaded", strings.TrimSpace(out))
	}
	if out, _ := sh(sys, "systemctl is-enabled membrane-envoy.service"); strings.TrimSpace(out) == "enabled" {
		t.Errorf("membrane-envoy.service is enabled after install; membraned starts it when its config says so")
	}
	if out, _ := sh(sys, "systemd-analyze security --no-pager membraned.service | tail -n 1"); out != "" {
		t.Logf("systemd-analyze security: %s", strings.TrimSpace(out))
	}

	step("installed; verify and security done")

	// The test's containers live on a Docker network of their own, and the
	// daemon manages only its bridge: other containers on this machine are
	// not touched. Metrics on a port of our own: the container shares the
	// host's network.
	bridge := "mpk" + id[len(id)-8:]
	network := id + "-net"
	docker(t, "network", "create", "--driver", "bridge", "-o", "com.docker.network.bridge.name="+bridge, network)
	t.Cleanup(func() { _ = exec.Command("docker", "network", "rm", network).Run() })
	metricsPort := 20000 + rand.IntN(20000)
	l7Port := metricsPort + 1
	mustSh(t, sys, fmt.Sprintf(`rm /usr/sbin/policy-rc.d && printf 'bridges = ["%s", "%sb"]\nmetrics {\n  listen = "127.0.0.1:%d"\n}\nl7 {\n  port = %d\n}\n' >> /etc/membrane/membrane.hcl`, bridge, bridge, metricsPort, l7Port))
	mustSh(t, sys, "systemctl start membraned")
	waitActive(t, sys)
	waitFor(t, 30*time.Second, "membrane status to answer", func() (bool, string) {
		out, err := sh(sys, "membrane status")
		return err == nil, out
	})

	// The L7 proxy path starts inside the unit's sandbox: nft (the
	// nftables dependency) makes its table, net.ipv4.tcp_early_demux is
	// written, and the built-in engine (no Envoy in the rootfs) listens.
	var st struct {
		L7Engine string   `json:"l7_engine"`
		L7Port   int      `json:"l7_port"`
		Errors   []string `json:"errors"`
	}
	if err := json.Unmarshal([]byte(mustSh(t, sys, "membrane status -o json")), &st); err != nil {
		t.Fatalf("membrane status -o json: %v", err)
	}
	if st.L7Engine != "builtin" || st.L7Port != l7Port {
		t.Fatalf("under the unit the L7 proxy is %q on port %d, want builtin on %d; errors: %q", st.L7Engine, st.L7Port, l7Port, st.Errors)
	}
	if out, err := sh(sys, "nft list table inet membrane_l7"); err != nil {
		t.Errorf("no nftables table inet membrane_l7 after the L7 proxy started: %v\n%s", err, out)
	}

	step("membraned active, membrane status answers, L7 proxy up")

	// Three containers of the host's Docker: srv serves 8080 (httpd) and
	// 9000 (nc, one connection; its stdin never ends, or busybox nc would
	// close the connection at EOF); cli is allowed, other is not.
	label := func(role string) string { return "app=" + id + "-" + role }
	run := func(role string, cmd ...string) string {
		name := id + "-" + role
		docker(t, append([]string{"run", "-d", "--name", name, "--network", network, "--label", label(role), busybox}, cmd...)...)
		t.Cleanup(func() { _ = exec.Command("docker", "rm", "-f", name).Run() })
		return name
	}
	srv := run("srv", "sh", "-c", "mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www && sleep 100000 | nc -l -p 9000 > /tmp/recv")
	cli := run("cli", "sleep", "3600")
	other := run("other", "sleep", "3600")
	srvIP := strings.TrimSpace(docker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", srv))
	// busybox nc, not wget: Debian's static busybox wget crashes here.
	reaches := func(from string) bool {
		out, _ := exec.Command("docker", "exec", from, "sh", "-c", fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 %s 8080`, srvIP)).Output()
		return bytes.Contains(out, []byte("hello"))
	}
	waitFor(t, 30*time.Second, "other to reach srv before any policy", func() (bool, string) { return reaches(other), "" })

	policy := fmt.Sprintf(`policy %q {
  selector = %q
  ingress {
    from_endpoints = [%q]
    ports          = ["8080/tcp", "9000/tcp"]
  }
}
`, id, label("srv"), label("cli"))
	put(t, sys, "/etc/membrane/policies.d/"+id+".hcl", []byte(policy), "0644")
	waitFor(t, 30*time.Second, "the dropped-in policy to deny other", func() (bool, string) { return !reaches(other), "" })
	if !reaches(cli) {
		t.Fatalf("the policy allows cli -> srv:8080, but cli cannot connect")
	}
	// The bridge program went on the managed bridge, and with it
	// accept_local=1 in /proc/sys/net/ipv4/conf (writable under the unit).
	waitFor(t, 15*time.Second, "accept_local=1 on the managed bridge", func() (bool, string) {
		b, _ := os.ReadFile("/proc/sys/net/ipv4/conf/" + bridge + "/accept_local")
		errs, _ := sh(sys, "membrane status -o json")
		return strings.TrimSpace(string(b)) == "1", fmt.Sprintf("accept_local=%q; status: %s", strings.TrimSpace(string(b)), errs)
	})
	// A bridge made after the daemon started (the unit's bind mount of
	// /proc/sys/net/ipv4/conf was set up before it existed) gets it too.
	lateBridge, lateNet, late := bridge+"b", id+"-net2", id+"-late"
	docker(t, "network", "create", "--driver", "bridge", "-o", "com.docker.network.bridge.name="+lateBridge, lateNet)
	t.Cleanup(func() { _ = exec.Command("docker", "network", "rm", lateNet).Run() })
	docker(t, "run", "-d", "--name", late, "--network", lateNet, "--label", label("late"), busybox, "sleep", "3600")
	t.Cleanup(func() { _ = exec.Command("docker", "rm", "-f", late).Run() })
	waitFor(t, 15*time.Second, "accept_local=1 on a bridge created after the start", func() (bool, string) {
		b, _ := os.ReadFile("/proc/sys/net/ipv4/conf/" + lateBridge + "/accept_local")
		errs, _ := sh(sys, "membrane status -o json")
		return strings.TrimSpace(string(b)) == "1", fmt.Sprintf("accept_local=%q; status: %s", strings.TrimSpace(string(b)), errs)
	})
	st.Errors = nil
	if err := json.Unmarshal([]byte(mustSh(t, sys, "membrane status -o json")), &st); err != nil {
		t.Fatalf("membrane status -o json: %v", err)
	}
	for _, e := range st.Errors {
		if strings.Contains(e, "bridge") || strings.Contains(e, "L7") || strings.Contains(e, "l7") {
			t.Errorf("status reports an L7 problem under the unit: %s", e)
		}
	}

	step("policy enforced")

	// An allowed, established connection across `systemctl restart`.
	docker(t, "exec", "-d", cli, "sh", "-c", fmt.Sprintf("i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done | nc %s 9000", srvIP))
	received := func() int {
		out, _ := exec.Command("docker", "exec", srv, "wc", "-l", "/tmp/recv").Output()
		n, _ := strconv.Atoi(strings.Fields(string(out) + " 0")[0])
		return n
	}
	waitFor(t, 15*time.Second, "the stream cli -> srv:9000 to flow", func() (bool, string) { return received() >= 10, "" })
	mustSh(t, sys, "systemctl restart membraned")
	waitActive(t, sys)
	before := received()
	waitFor(t, 15*time.Second, "the stream to keep flowing after the restart", func() (bool, string) {
		n := received()
		return n >= before+20, fmt.Sprintf("%d lines, %d before", n, before)
	})
	if exec.Command("docker", "exec", cli, "pidof", "nc").Run() != nil {
		t.Fatalf("the client's connection ended across the restart")
	}
	if reaches(other) {
		t.Fatalf("after the restart other reaches srv: the policy is not enforced")
	}

	step("restart kept the connection")

	// A package upgrade: prerm leaves the daemon running, postinst restarts
	// it (a new main PID) with the datapath kept, so the stream goes on.
	newer, err := Build(t.Context(), Options{RepoRoot: repoRoot(t), BinDir: testBinaries(t), OutDir: t.TempDir(),
		Version: "1.0.1-test", Formats: []string{FormatDeb}})
	if err != nil {
		t.Fatal(err)
	}
	pidBefore := strings.TrimSpace(mustSh(t, sys, "systemctl show -p MainPID --value membraned"))
	put(t, sys, "/root/membrane-new.deb", mustRead(t, newer.Deb), "0644")
	mustSh(t, sys, "dpkg -i /root/membrane-new.deb")
	if v := strings.TrimSpace(mustSh(t, sys, "dpkg-query -W -f '${Version}' membrane")); v != newer.Version {
		t.Fatalf("after the upgrade dpkg says %s, want %s", v, newer.Version)
	}
	waitActive(t, sys)
	if pid := strings.TrimSpace(mustSh(t, sys, "systemctl show -p MainPID --value membraned")); pid == pidBefore {
		t.Fatalf("the upgrade did not restart membraned (main PID still %s)", pid)
	}
	before = received()
	waitFor(t, 15*time.Second, "the stream to keep flowing after the upgrade", func() (bool, string) {
		n := received()
		return n >= before+20, fmt.Sprintf("%d lines, %d before", n, before)
	})
	if exec.Command("docker", "exec", cli, "pidof", "nc").Run() != nil {
		t.Fatalf("the client's connection ended across the upgrade")
	}
	if reaches(other) {
		t.Fatalf("after the upgrade other reaches srv: the policy is not enforced")
	}

	step("upgrade kept the connection")

	// Every capability the unit keeps must be needed: without it membraned
	// fails, does not enforce, or cannot start the L7 proxy. Each probe starts from a clean datapath
	// (--cleanup), so a denial can only come from the probed daemon.
	for _, c := range unitCapabilities(t) {
		if why, ok := capabilityNotProbed[c]; ok {
			t.Logf("%s: kept, not probed here: %s", c, why)
			continue
		}
		var rest []string
		for _, o := range unitCapabilities(t) {
			if o != c {
				rest = append(rest, o)
			}
		}
		set := strings.Join(rest, " ")
		put(t, sys, "/etc/systemd/system/membraned.service.d/probe.conf", []byte(fmt.Sprintf(
			"[Service]\nCapabilityBoundingSet=\nCapabilityBoundingSet=%s\nAmbientCapabilities=\nAmbientCapabilities=%s\nRestart=no\n", set, set)), "0644")
		mustSh(t, sys, "systemctl stop membraned && membraned --cleanup && systemctl daemon-reload && systemctl reset-failed membraned")
		since := strings.TrimSpace(mustSh(t, sys, "date +%s"))
		if !reaches(other) {
			t.Fatalf("after --cleanup other still cannot reach srv")
		}
		_, _ = sh(sys, "timeout 30 systemctl start membraned")
		enforced := false
		deadline := time.Now().Add(12 * time.Second)
		for time.Now().Before(deadline) {
			st, _ := sh(sys, "systemctl is-active membraned")
			if strings.TrimSpace(st) == "failed" {
				break
			}
			if strings.TrimSpace(st) == "active" && !reaches(other) && l7Up(sys) {
				enforced = true
				break
			}
			time.Sleep(300 * time.Millisecond)
		}
		if enforced {
			t.Errorf("membraned enforces and runs the L7 proxy without %s: drop it from the unit's CapabilityBoundingSet", c)
		} else {
			out, _ := sh(sys, "journalctl --no-pager -u membraned --since @"+since+" | grep -iE 'not permitted|denied|error' | tail -n 1")
			t.Logf("without %s: membraned does not work (needed): %s", c, strings.TrimSpace(out))
		}
	}
	mustSh(t, sys, "rm -rf /etc/systemd/system/membraned.service.d && systemctl stop membraned; membraned --cleanup && systemctl daemon-reload && systemctl reset-failed membraned; systemctl start membraned")
	waitActive(t, sys)
	waitFor(t, 30*time.Second, "the policy to be enforced again", func() (bool, string) { return !reaches(other), "" })

	step("capabilities probed")

	// Purge: no pin, no attachment, no enforcement left.
	srvVeth := hostVeth(t, srv)
	mustSh(t, sys, "dpkg --purge membrane")
	if out, _ := sh(sys, "systemctl is-active membraned"); strings.TrimSpace(out) == "active" {
		t.Errorf("membraned still active after purge")
	}
	var left []string
	filepath.Walk(bpfDir, func(p string, _ os.FileInfo, err error) error {
		if err == nil && p != bpfDir {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("pins left after dpkg --purge: %v", left)
	}
	if links := tcxLinks(t, srvVeth.Index); len(links) > 0 {
		t.Errorf("tcx links left on %s after purge: %v", srvVeth.Name, links)
	}
	for _, dir := range []string{"ingress", "egress"} {
		out, _ := exec.Command("tc", "filter", "show", "dev", srvVeth.Name, dir).CombinedOutput()
		if bytes.Contains(out, []byte("bpf")) {
			t.Errorf("tc %s filter left on %s after purge:\n%s", dir, srvVeth.Name, out)
		}
	}
	if !reaches(other) {
		t.Errorf("after purge other still cannot reach srv")
	}

	// Presets are honoured: where the admin's preset disables the unit, a
	// fresh install neither enables nor starts it.
	step("purged")
	put(t, sys, "/etc/systemd/system-preset/00-membrane-test.preset", []byte("disable membraned.service\n"), "0644")
	mustSh(t, sys, "dpkg -i /root/membrane.deb")
	if out, _ := sh(sys, "systemctl is-enabled membraned"); strings.TrimSpace(out) != "disabled" {
		t.Errorf("with a disabling preset membraned is %q after install, want disabled", strings.TrimSpace(out))
	}
	if out, _ := sh(sys, "systemctl is-active membraned"); strings.TrimSpace(out) == "active" {
		t.Errorf("with a disabling preset membraned was started")
	}
	mustSh(t, sys, "dpkg --purge membrane")
}

// capabilityNotProbed: capabilities of the unit this test cannot show the
// need for, and why (docs/operations.md, "Capabilities").
var capabilityNotProbed = map[string]string{
	// Reading /proc/PID/ns/net of containerd's tasks; the Docker containers
	// here are found through /run/docker/netns. TestContainerNetnsNeedsSysPtrace
	// shows the need.
	"CAP_SYS_PTRACE": "containerd containers' /proc/PID/ns/net (see TestContainerNetnsNeedsSysPtrace)",
}

// l7Up reports whether membraned in container sys runs its L7 proxy
// (membrane status -o json names the engine).
func l7Up(sys string) bool {
	out, err := sh(sys, "membrane status -o json")
	if err != nil {
		return false
	}
	var st struct {
		L7Engine string `json:"l7_engine"`
	}
	return json.Unmarshal([]byte(out), &st) == nil && st.L7Engine != ""
}

// unitCapabilities reads CapabilityBoundingSet from systemd/membraned.service.
func unitCapabilities(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "systemd", "membraned.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapabilityBoundingSet="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatal("membraned.service has no CapabilityBoundingSet")
	return nil
}

// TestContainerNetnsNeedsSysPtrace shows why the unit keeps CAP_SYS_PTRACE:
// with the unit's other capabilities alone, root cannot open a container
// process's /proc/PID/ns/net (the kernel's ptrace access check: the
// container holds capabilities the reader lacks), which is how membraned
// finds the network namespace of a containerd task.
func TestContainerNetnsNeedsSysPtrace(t *testing.T) {
	testenv.RequireDocker(t)
	testenv.RequireBinary(t, "setpriv")
	img := testenv.BusyboxImage(t)
	name := "pkgtest-ptrace-" + testenv.RandomSuffix(6)
	docker(t, "run", "-d", "--name", name, img, "sleep", "300")
	t.Cleanup(func() { _ = exec.Command("docker", "rm", "-f", name).Run() })
	pid := strings.TrimSpace(docker(t, "inspect", "-f", "{{.State.Pid}}", name))
	var without []string
	for _, c := range unitCapabilities(t) {
		if c != "CAP_SYS_PTRACE" {
			without = append(without, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
		}
	}
	open := func(caps []string) error {
		return exec.Command("setpriv", "--bounding-set=-all,"+strings.Join(caps, ","), "--",
			"readlink", "/proc/"+pid+"/ns/net").Run()
	}
	if err := open(without); err == nil {
		t.Fatalf("/proc/%s/ns/net is readable without CAP_SYS_PTRACE: the unit may not need it", pid)
	}
	if err := open(append(without, "+sys_ptrace")); err != nil {
		t.Fatalf("/proc/%s/ns/net is not readable even with CAP_SYS_PTRACE: %v", pid, err)
	}
}

// makeRootShared makes the host's / a shared mount, as it is on every host
// that systemd boots: Docker refuses the rslave bind of /run/docker/netns
// otherwise, and without propagation the namespaces of containers created
// after the systemd container starts would not appear in it. This machine
// boots without systemd, with / private; it is made private again when the
// test ends.
func makeRootShared(t *testing.T) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 6 && f[4] == "/" {
			for _, opt := range f[6:] {
				if strings.HasPrefix(opt, "shared:") {
					return
				}
				if opt == "-" {
					break
				}
			}
		}
	}
	if out, err := exec.Command("mount", "--make-shared", "/").CombinedOutput(); err != nil {
		t.Fatalf("mount --make-shared /: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("mount", "--make-private", "/").CombinedOutput(); err != nil {
			t.Errorf("mount --make-private /: %v: %s", err, out)
		}
	})
}

// hostVeth finds the host side of container's eth0.
func hostVeth(t *testing.T, container string) *net.Interface {
	t.Helper()
	out := docker(t, "exec", container, "cat", "/sys/class/net/eth0/iflink")
	idx, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("iflink of %s: %q", container, out)
	}
	ifc, err := net.InterfaceByIndex(idx)
	if err != nil {
		t.Fatalf("host veth of %s: %v", container, err)
	}
	return ifc
}

// tcxLinks lists the tcx links attached to ifindex.
func tcxLinks(t *testing.T, ifindex int) []string {
	t.Helper()
	var found []string
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		if tcx := info.TCX(); tcx != nil && int(tcx.Ifindex) == ifindex {
			found = append(found, fmt.Sprintf("link %d (program %d)", it.ID, info.Program))
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("listing BPF links: %v", err)
	}
	return found
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sh runs a shell command in container.
func sh(container, script string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "exec", container, "sh", "-c", script).CombinedOutput()
	return string(out), err
}

func mustSh(t *testing.T, container, script string) string {
	t.Helper()
	out, err := sh(container, script)
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", container, script, err, out)
	}
	return out
}

// put writes a file into a container (docker cp cannot write into the
// tmpfs mounts a systemd container has).
func put(t *testing.T, container, path string, data []byte, mode string) {
	t.Helper()
	cmd := exec.Command("docker", "exec", "-i", container, "sh", "-c", fmt.Sprintf("mkdir -p \"$(dirname %s)\" && cat > %s && chmod %s %s", path, path, mode, path))
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("writing %s in %s: %v: %s", path, container, err, out)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func waitActive(t *testing.T, container string) {
	t.Helper()
	waitFor(t, 60*time.Second, "membraned to be active", func() (bool, string) {
		out, _ := sh(container, "systemctl is-active membraned")
		s := strings.TrimSpace(out)
		if s == "failed" {
			st, _ := sh(container, "systemctl status --no-pager membraned; journalctl --no-pager -u membraned | tail -n 30")
			t.Fatalf("membraned failed:\n%s", st)
		}
		return s == "active", s
	})
}

// waitFor polls cond until it holds or timeout passes. Polling, not
// sleeping a fixed time: the test is as fast as the system allows and only
// the upper bound is fixed.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last: %s)", timeout, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
