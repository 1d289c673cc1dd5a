package envoy

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A stand-in for the envoy binary, run by re-executing the test binary with
// MEMBRANE_FAKE_ENVOY set: it reads the admin socket from the bootstrap (-c)
// like Envoy does, serves /ready there, and exits with status 3 when its
// start count (kept in MEMBRANE_FAKE_ENVOY's directory) is in the crash list.
// It tests the supervisor; the real Envoy runs in TestConformanceEnvoy.
func TestMain(m *testing.M) {
	if dir := os.Getenv("MEMBRANE_FAKE_ENVOY"); dir != "" {
		os.Exit(fakeEnvoy(dir))
	}
	os.Exit(m.Run())
}

func fakeEnvoy(dir string) int {
	var cfgPath string
	for i, a := range os.Args {
		if a == "-c" && i+1 < len(os.Args) {
			cfgPath = os.Args[i+1]
		}
	}
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var b struct {
		Admin struct {
			Address struct {
				Pipe struct{ Path string } `json:"pipe"`
			} `json:"address"`
		} `json:"admin"`
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	countFile := filepath.Join(dir, "starts")
	data, _ := os.ReadFile(countFile)
	n, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	n++
	os.WriteFile(countFile, []byte(strconv.Itoa(n)), 0o600)
	crash, _ := os.ReadFile(filepath.Join(dir, "crash"))
	for _, c := range strings.Fields(string(crash)) {
		if c == strconv.Itoa(n) {
			// As Envoy says why it cannot start, on stderr, before it exits.
			fmt.Fprintf(os.Stderr, "[critical][main] error initializing config '%s': start %d refused\n", cfgPath, n)
			return 3
		}
	}
	os.Remove(b.Admin.Address.Pipe.Path)
	l, err := net.Listen("unix", b.Admin.Address.Pipe.Path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_, err = os.Stat(filepath.Join(dir, "hang"+strconv.Itoa(n)))
	hang := err == nil
	if hang {
		// Answer for a while, then hang: alive but deaf.
		go func() { time.Sleep(500 * time.Millisecond); l.Close() }()
	}
	http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ready" {
			fmt.Fprintln(w, "LIVE")
			return
		}
		if r.URL.Path == "/quitquitquit" {
			fmt.Fprintln(w, "OK")
			go func() { time.Sleep(10 * time.Millisecond); os.Exit(0) }()
			return
		}
		http.NotFound(w, r)
	}))
	if hang {
		time.Sleep(time.Hour)
	}
	return 0
}

// fakeEnvoyEngine is an engine that runs this test binary as its envoy (the
// named stand-in above), whose starts listed in crashes (as "1 2") exit at
// once.
func fakeEnvoyEngine(t *testing.T, crashes string) *Engine {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "crash"), []byte(crashes), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MEMBRANE_FAKE_ENVOY", dir)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{Port: 15001, RunDir: filepath.Join(dir, "run"), EnvoyPath: exe})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func TestSupervisorStartsRestartsWithBackoffAndStops(t *testing.T) {
	e := fakeEnvoyEngine(t, "1 2") // starts 1 and 2 crash at once; 3 serves
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	if err := e.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	// Two crashes: backoff 250ms then 500ms before the third start.
	if got := e.sup.Starts(); got != 3 {
		t.Fatalf("ready after %d starts, want 3 (two crashes)", got)
	}
	if el := time.Since(start); el < 700*time.Millisecond {
		t.Errorf("ready %v after two crashes; the backoff (250ms+500ms) was not applied", el)
	}
	// A clean exit of a running Envoy is restarted too.
	resp, err := (&http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", e.Paths().AdminSocket)
	}}}).Post("http://envoy/quitquitquit", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for e.sup.Starts() < 4 {
		if time.Now().After(deadline) {
			t.Fatal("the supervisor did not restart Envoy after it exited")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := e.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Ready(context.Background(), e.Paths().AdminSocket); err == nil {
		t.Fatal("Envoy still answers after Close")
	}
}

// standIn makes this test binary the stand-in envoy for a supervisor run
// in dir (its state and crash or hang lists there): it returns the binary
// and the paths, with a bootstrap written.
func standIn(t *testing.T, dir string) (string, Paths) {
	t.Helper()
	t.Setenv("MEMBRANE_FAKE_ENVOY", dir)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := PathsIn(dir)
	boot, err := Bootstrap(p.XDSSocket, p.AdminSocket, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.Bootstrap, boot, 0o600); err != nil {
		t.Fatal(err)
	}
	return exe, p
}

func TestSupervisorKillsAHungEnvoy(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "hang1"), nil, 0o600)
	exe, p := standIn(t, dir)
	s := &Supervisor{Path: exe, Args: []string{"-c", p.Bootstrap}, AdminSocket: p.AdminSocket,
		HealthInterval: 100 * time.Millisecond, HealthFailures: 2, MinBackoff: 10 * time.Millisecond}
	exits := make(chan error, 4)
	s.OnExit = func(err error) { exits <- err }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(15 * time.Second)
	for s.Starts() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("a hung Envoy (no /ready answers) was not restarted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := <-exits; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("the hung Envoy ended with %v, want killed by the supervisor", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	for Ready(wctx, p.AdminSocket) != nil {
		if wctx.Err() != nil {
			t.Fatal("the restarted Envoy never became ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
