package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// nspawnSystemd boots systemd as PID 1 of a systemd-nspawn container (no
// Docker: the rootfs tarball of systemdRootfs, extracted under
// /var/tmp, a network namespace of its own, /run a tmpfs of the test's own
// mount namespace) and returns the rootfs and a function that runs a
// command inside it. The container is shut down and removed on cleanup.
func nspawnSystemd(t *testing.T) (root string, in func(args ...string) (string, error)) {
	t.Helper()
	testenv.RequireBinary(t, "systemd-nspawn")
	testenv.RequireBinary(t, "nsenter")
	testenv.RequireBinary(t, "unshare")
	if os.Geteuid() != 0 {
		testenv.Skip(t, "systemd-nspawn needs root")
	}
	tarball := systemdRootfs(t)
	root, err := os.MkdirTemp("/var/tmp", "membrane-nspawn-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	run(t, "tar", "-C", root, "-xf", tarball)

	var log bytes.Buffer
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs tmpfs /run && exec systemd-nspawn -q -D "$0" --boot --register=no --keep-unit --private-network -M "$1"`,
		root, "membrane-"+testenv.RandomSuffix(6))
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var initPID int
	t.Cleanup(func() {
		// nspawn shuts the container down on SIGTERM; its PID 1 dying ends
		// every process of the container's PID namespace.
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			if initPID > 0 {
				syscall.Kill(initPID, syscall.SIGKILL)
			}
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("nspawn:\n%s", tail(log.String(), 30))
		}
	})
	in = func(args ...string) (string, error) {
		out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(initPID), "-a", "--"}, args...)...).CombinedOutput()
		return string(out), err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		// The container's PID 1 is nspawn's child once it runs systemd.
		initPID = 0
		if out, err := exec.Command("pgrep", "-P", strconv.Itoa(cmd.Process.Pid), "-x", "systemd").Output(); err == nil {
			initPID, _ = strconv.Atoi(strings.Fields(string(out))[0])
		}
		if initPID > 0 {
			out, _ := in("systemctl", "is-system-running")
			switch strings.TrimSpace(out) {
			case "starting", "running", "degraded":
				return root, in
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd did not boot in the nspawn container:\n%s", tail(log.String(), 30))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// packagedUnits boots systemd in nspawn with the packaged units and a
// drop-in that replaces membraned's ExecStart with standIn (no BPF inside
// nspawn), keeping the rest of the unit, hardening and all.
func packagedUnits(t *testing.T, standIn string) func(args ...string) (string, error) {
	t.Helper()
	root, in := nspawnSystemd(t)
	put := func(p string, data []byte, mode os.FileMode) {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	for src, dst := range map[string]string{
		"systemd/membraned.service":          "/lib/systemd/system/membraned.service",
		"proxy/envoy/membrane-envoy.service": "/lib/systemd/system/membrane-envoy.service",
	} {
		put(dst, mustRead(t, filepath.Join(repoRoot(t), src)), 0o644)
	}
	put("/usr/bin/envoy", []byte("#!/bin/sh\nexec sleep 100000\n"), 0o755)
	put("/etc/systemd/system/membraned.service.d/standin.conf", []byte(`[Service]
ExecStart=
ExecStart=/bin/sh -c '`+standIn+`'
NotifyAccess=all
WatchdogSec=0
TimeoutStartSec=20s
# nspawn gives no bpffs at /sys/fs/bpf to make writable.
ReadWritePaths=
`), 0o644)
	if out, err := in("systemctl", "daemon-reload"); err != nil {
		t.Fatalf("daemon-reload: %v\n%s", err, out)
	}
	return in
}

// membraned starts the Envoy unit (l7.envoy_unit) with `systemctl start`
// while its own start job runs: the L7 proxy starts before the first full
// reconcile and READY=1. The Envoy unit must not be ordered after
// membraned.service, or its start job waits for membraned's, which waits
// for READY=1: both hang until TimeoutStartSec kills membraned.
func TestEnvoyUnitStartsFromMembranedBeforeReady(t *testing.T) {
	in := packagedUnits(t, "mkdir -p /run/membrane/envoy && echo {} > /run/membrane/envoy/bootstrap.json && systemctl start membrane-envoy.service && systemd-notify --ready && exec sleep 100000")
	// The Envoy unit is verified here (TestDebUnderSystemd verifies membraned's).
	if out, err := in("systemd-analyze", "verify", "--man=no", "membrane-envoy.service"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify membrane-envoy.service: %v\n%s", err, out)
	}
	if out, err := in("timeout", "60", "systemctl", "start", "membraned.service"); err != nil {
		status, _ := in("systemctl", "--no-pager", "status", "membraned.service", "membrane-envoy.service")
		t.Fatalf("systemctl start membraned (which starts membrane-envoy.service before READY=1): %v\n%s\n%s", err, out, status)
	}
	if out, _ := in("systemctl", "is-active", "membrane-envoy.service"); strings.TrimSpace(out) != "active" {
		t.Fatalf("membrane-envoy.service is %q after membraned started it", strings.TrimSpace(out))
	}
	// PartOf: stopping membraned stops the Envoy it started.
	in("systemctl", "stop", "membraned.service")
	if out, _ := in("systemctl", "is-active", "membrane-envoy.service"); strings.TrimSpace(out) == "active" {
		t.Fatalf("membrane-envoy.service still active after membraned stopped")
	}
}

// membraned reloads its policy directory on SIGHUP (watchHangup): `systemctl
// reload membraned`, the usual way to ask a daemon for that, must send it.
func TestUnitReloadSendsSIGHUP(t *testing.T) {
	in := packagedUnits(t, "trap \"echo hup >> /run/membrane/hup\" HUP; systemd-notify --ready; while :; do sleep 0.1; done")
	if out, err := in("timeout", "60", "systemctl", "start", "membraned.service"); err != nil {
		t.Fatalf("systemctl start membraned: %v\n%s", err, out)
	}
	if out, err := in("timeout", "30", "systemctl", "reload", "membraned.service"); err != nil {
		t.Fatalf("systemctl reload membraned: %v\n%s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := in("cat", "/run/membrane/hup")
		if strings.TrimSpace(out) == "hup" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("membraned got no SIGHUP from systemctl reload")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, _ := in("systemctl", "is-active", "membraned.service"); strings.TrimSpace(out) != "active" {
		t.Fatalf("membraned is %q after reload", strings.TrimSpace(out))
	}
}
