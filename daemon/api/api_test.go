package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
)

type fakeBackend struct {
	hub     *FlowHub
	reloads atomic.Int32
}

func (f *fakeBackend) Status() Status {
	return Status{Up: true, Reconciled: true, Endpoints: 2, Identities: 3, Policies: 1, PolicyRevision: 7, Errors: []string{}}
}
func (f *fakeBackend) Endpoints() []Endpoint {
	return []Endpoint{{ID: 1, Identity: 256, Labels: map[string]string{"app": "api"}, Addresses: []string{"172.17.0.2"}, Containers: []Container{{ID: "abc", Name: "api"}}}}
}
func (f *fakeBackend) Endpoint(ref string) (Endpoint, bool) {
	if ref == "api" || ref == "1" {
		return f.Endpoints()[0], true
	}
	return Endpoint{}, false
}
func (f *fakeBackend) Identities() []Identity { return nil }
func (f *fakeBackend) Policy() Policy         { return Policy{Revision: 7} }
func (f *fakeBackend) Trace(ctx context.Context, req TraceRequest) (TraceResult, error) {
	if req.FromContainer == "missing" {
		return TraceResult{}, fmt.Errorf("container %q: %w", req.FromContainer, ErrNotFound)
	}
	return TraceResult{Text: "allowed"}, nil
}
func (f *fakeBackend) Flows(ctx context.Context, follow bool) ([]Flow, <-chan Flow) {
	return f.hub.Flows(ctx, follow)
}
func (f *fakeBackend) ReloadPolicies(ctx context.Context) error { f.reloads.Add(1); return nil }
func (f *fakeBackend) Resync(ctx context.Context) error         { return nil }

// start serves a fake backend in a world-traversable directory (so the
// unprivileged helper processes can reach the socket).
func start(t *testing.T, opts Options, tweak ...func(*Server)) (*fakeBackend, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "membrane-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	opts.Socket = filepath.Join(dir, "api.sock")
	b := &fakeBackend{hub: NewFlowHub(100)}
	srv, err := NewServer(opts, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range tweak {
		f(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return b, opts.Socket
}

func TestClientReadsStatusAndEndpoints(t *testing.T) {
	_, sock := start(t, Options{})
	c := NewClient(sock)
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Up || st.PolicyRevision != 7 || st.Endpoints != 2 {
		t.Fatalf("status %+v", st)
	}
	ep, err := c.Endpoint(ctx, "api")
	if err != nil || ep.Identity != 256 {
		t.Fatalf("endpoint %+v %v", ep, err)
	}
	_, err = c.Endpoint(ctx, "nope")
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 404 {
		t.Fatalf("want 404, got %v", err)
	}
	ids, err := c.Identities(ctx)
	if err != nil || ids == nil {
		t.Fatalf("identities %v %v (want empty list, not null)", ids, err)
	}
	_, err = c.Trace(ctx, TraceRequest{FromContainer: "missing"})
	if !errors.As(err, &se) || se.Code != 404 {
		t.Fatalf("trace of missing container: %v", err)
	}
}

func TestSocketModeAndStaleSocket(t *testing.T) {
	_, sock := start(t, Options{Mode: 0o660, Group: "no-such-group-membrane-test"})
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("without the group the socket must be 0600, is %v", fi.Mode().Perm())
	}
	// A live daemon on the socket: refuse to start a second one.
	if _, err := Listen(sock); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second listener: want ErrAlreadyRunning, got %v", err)
	}

	// A stale socket (nobody listening) is replaced.
	stale := filepath.Join(t.TempDir(), "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln2, err := Listen(stale)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln2.Close()

	// A regular file is not a socket: refuse, do not delete it.
	reg := filepath.Join(t.TempDir(), "file")
	os.WriteFile(reg, []byte("x"), 0o600)
	if _, err := Listen(reg); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: %v", err)
	}
	if _, err := os.Stat(reg); err != nil {
		t.Fatal("regular file removed")
	}
}

func TestSocketGroupOwnership(t *testing.T) {
	testenv.RequireRoot(t)
	_, sock := start(t, Options{Mode: 0o660, Group: "nogroup"})
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || st.Uid != 0 || st.Gid != 65534 {
		t.Fatalf("socket mode %v owner %d:%d, want 0660 0:65534", fi.Mode().Perm(), st.Uid, st.Gid)
	}
}

func TestBrowserRequestsRefused(t *testing.T) {
	_, sock := start(t, Options{})
	c := NewClient(sock)
	for _, h := range []string{"Origin", "Referer"} {
		if status, _ := statusWith(t, c, "", h, "http://evil.example"); status != http.StatusForbidden {
			t.Fatalf("%s: status %d, want 403", h, status)
		}
	}
}

// statusWith sends GET /v1/status through c with Host host (the client's
// when empty) and field: value (none when field is empty), and returns the
// answer's status and, for an error, its text.
func statusWith(t *testing.T, c *Client, host, field, value string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://membraned/v1/status", nil)
	if host != "" {
		req.Host = host
	}
	if field != "" {
		req.Header.Set(field, value)
	}
	return answer(t)(c.http.Do(req))
}

// postRaw posts body as it is (the CLI's client would marshal it) and
// returns the status and the error body's message.
func postRaw(t *testing.T, sock, path, body string) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	return answer(t)(hc.Post("http://membraned"+path, "application/json", strings.NewReader(body)))
}

// answer reads a response's status and error body's message, failing t
// where there was no response.
func answer(t *testing.T) func(*http.Response, error) (int, string) {
	return func(resp *http.Response, err error) (int, string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var eb ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		return resp.StatusCode, eb.Error
	}
}

func TestDaemonDownIsClear(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "none.sock"))
	_, err := c.Status(context.Background())
	if !errors.Is(err, ErrDaemonDown) {
		t.Fatalf("want ErrDaemonDown, got %v", err)
	}
}

// TestHelperClient is the unprivileged client, run in a child process.
func TestHelperClient(t *testing.T) {
	sock := os.Getenv("MEMBRANE_API_HELPER_SOCKET")
	if sock == "" {
		return
	}
	c := NewClient(sock)
	ctx := context.Background()
	res := map[string]string{}
	if _, err := c.Status(ctx); err != nil {
		res["read"] = err.Error()
	} else {
		res["read"] = "ok"
	}
	if _, err := c.ReloadPolicies(ctx); err != nil {
		res["write"] = err.Error()
	} else {
		res["write"] = "ok"
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

// helperBinary copies the test binary where an unprivileged user may run
// it (go test builds it in a 0700 directory).
func helperBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "membrane-api-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "api.test")
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func runAs(t *testing.T, sock string, cred *syscall.Credential) map[string]string {
	t.Helper()
	cmd := exec.Command(helperBinary(t), "-test.run=^TestHelperClient$")
	cmd.Env = append(os.Environ(), "MEMBRANE_API_HELPER_SOCKET="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.Dir = "/"
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper as uid %d: %v: %s", cred.Uid, err, out)
	}
	var res map[string]string
	line := strings.SplitN(string(out), "\n", 2)[0]
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	return res
}

func TestNonRootNonGroupUserCannotWrite(t *testing.T) {
	testenv.RequireRoot(t)
	b, sock := start(t, Options{Mode: 0o666, Group: "nogroup"})
	// uid/gid 65533: neither root nor in nogroup. Reads work (the socket
	// mode lets it connect), writes are refused.
	res := runAs(t, sock, &syscall.Credential{Uid: 65533, Gid: 65533})
	if res["read"] != "ok" {
		t.Fatalf("read refused: %v", res)
	}
	if !strings.Contains(res["write"], "permission denied") {
		t.Fatalf("write by outsider: %q, want permission denied", res["write"])
	}
	if n := b.reloads.Load(); n != 0 {
		t.Fatalf("outsider's write reached the backend %d times", n)
	}
	// Primary group member may write.
	if res := runAs(t, sock, &syscall.Credential{Uid: 65533, Gid: 65534}); res["write"] != "ok" {
		t.Fatalf("group member (primary gid) refused: %v", res)
	}
	// Supplementary group member may write (SO_PEERGROUPS).
	if res := runAs(t, sock, &syscall.Credential{Uid: 65533, Gid: 65533, Groups: []uint32{65534}}); res["write"] != "ok" {
		t.Fatalf("group member (supplementary) refused: %v", res)
	}
	if n := b.reloads.Load(); n != 2 {
		t.Fatalf("backend saw %d writes, want 2", n)
	}
}

func TestObserveBacklogFilterAndFollow(t *testing.T) {
	b, sock := start(t, Options{})
	b.hub.Publish(Flow{Verdict: "allowed", Source: Peer{Container: "web"}})
	b.hub.Publish(Flow{Verdict: "dropped", Reason: "policy", Source: Peer{Container: "web"}})
	b.hub.Publish(Flow{Verdict: "dropped", Reason: "policy", Source: Peer{Container: "other"}})
	c := NewClient(sock)
	var got []Flow
	err := c.Observe(context.Background(), ObserveFilter{Verdict: "dropped", Container: "web"}, func(f Flow) error {
		got = append(got, f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Source.Container != "web" || got[0].Verdict != "dropped" {
		t.Fatalf("backlog filtered: %+v", got)
	}
	b.hub.Publish(Flow{Type: FlowL7, Verdict: "denied", Direction: "ingress"})
	b.hub.Publish(Flow{Type: FlowL7, Verdict: "denied", Direction: "egress"})
	got = nil
	err = c.Observe(context.Background(), ObserveFilter{Type: FlowL7, Direction: "egress"}, func(f Flow) error {
		got = append(got, f)
		return nil
	})
	if err != nil || len(got) != 1 || got[0].Direction != "egress" {
		t.Fatalf("--direction egress: %v %+v", err, got)
	}
	if err := c.Observe(context.Background(), ObserveFilter{Direction: "sideways"}, func(Flow) error { return nil }); err == nil || !strings.Contains(err.Error(), `direction "sideways"`) {
		t.Fatalf("a bad direction: %v, want the server's error naming it", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	recv := make(chan Flow, 10)
	go c.Observe(ctx, ObserveFilter{Follow: true, Verdict: "audit"}, func(f Flow) error { recv <- f; return nil })
	// Publish until the follower has subscribed and sees one.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case f := <-recv:
			if f.Verdict != "audit" {
				t.Fatalf("follow got %+v", f)
			}
			return
		case <-tick.C:
			b.hub.Publish(Flow{Verdict: "allowed"})
			b.hub.Publish(Flow{Verdict: "audit", Reason: "policy"})
		case <-ctx.Done():
			t.Fatal("no followed flow")
		}
	}
}

func TestFlowHubKeepsTheLastN(t *testing.T) {
	h := NewFlowHub(3)
	for i := range 5 {
		h.Publish(Flow{Bytes: i})
	}
	got, _ := h.Flows(context.Background(), false)
	if len(got) != 3 || got[0].Bytes != 2 || got[2].Bytes != 4 {
		t.Fatalf("backlog %+v", got)
	}
}

// A trace request that is not exactly one JSON object of known fields is
// refused (400) with where the problem is; a request with more after its
// object is not half-read and answered as if it were whole.
func TestTraceRequestBodyErrorsSayWhere(t *testing.T) {
	_, sock := start(t, Options{})
	for _, c := range []struct{ body, want string }{
		{``, "the body is empty"},
		{`{"from_container": "a"`, "the body ends at byte"},
		{`{"from_container": "a",,}`, "invalid JSON at byte 24"},
		{`{"from_containr": "a"}`, `field "from_containr" (byte 2) is not known (known: from_container, from_entity,`},
		{`{"port": 99999}`, `field "port" (byte 14): JSON number 99999 does not fit uint16`},
		{`{"from_container": "a"} {"from_container": "b"}`, "unexpected data after the JSON object, which ends at byte 23"},
		{`{"from_container": "a"} garbage`, "unexpected data after the JSON object"},
		{`[{"from_container": "a"}]`, "JSON array at byte 1: want one JSON object"},
		{`{"from_container": "` + strings.Repeat("a", 2<<20) + `"}`, "the body is over 1048576 bytes"},
	} {
		if status, msg := postRaw(t, sock, "/v1/policy/trace", c.body); status != http.StatusBadRequest || !strings.Contains(msg, c.want) {
			name := c.body
			if len(name) > 60 {
				name = name[:60] + "..."
			}
			t.Errorf("body %q: %d %q, want 400 with %q", name, status, msg, c.want)
		}
	}
}

// A page that rebinds its own name to 127.0.0.1, where something forwards
// to the socket, sends a same-origin GET: no Origin, and no Referer when it
// asks for none. Its Host is the page's name, never the CLI's.
func TestRebindingHostRefused(t *testing.T) {
	_, sock := start(t, Options{})
	c := NewClient(sock)
	for _, host := range []string{"attacker.example:8080", "127.0.0.1:8080", "attacker.example"} {
		if status, msg := statusWith(t, c, host, "", ""); status != http.StatusForbidden || !strings.Contains(msg, "Host") {
			t.Fatalf("Host %q: %d %q, want 403 naming the Host", host, status, msg)
		}
	}
	// The CLI's Host, and curl's (curl --unix-socket ... http://localhost/...).
	for _, host := range []string{"membraned", "localhost"} {
		if status, _ := statusWith(t, c, host, "", ""); status != http.StatusOK {
			t.Fatalf("Host %q: %d, want 200", host, status)
		}
	}
}

// A follower that stops reading loses its subscription rather than
// stalling the publisher (the datapath's event reader); when it reads
// again it gets what was queued and then an error saying it fell behind,
// not the quiet end of a finished stream.
// A follow value that is neither yes nor no is refused: taken for "no",
// a client that meant to follow got the backlog and an end, as if nothing
// more would come.
func TestObserveFollowValueIsChecked(t *testing.T) {
	_, sock := start(t, Options{})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	for _, v := range []string{"yes", "on", "2", "TRUE "} {
		status, msg := answer(t)(hc.Get("http://membraned/v1/observe?follow=" + url.QueryEscape(v)))
		if status != http.StatusBadRequest || !strings.Contains(msg, "must be true or false") {
			t.Errorf("follow=%q: status %d, %q", v, status, msg)
		}
	}
	if status, _ := answer(t)(hc.Get("http://membraned/v1/observe?follow=false")); status != http.StatusOK {
		t.Errorf("follow=false: status %d", status)
	}
}

func TestObserveFollowerThatFallsBehindIsTold(t *testing.T) {
	b, sock := start(t, Options{})
	c := NewClient(sock)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first := make(chan struct{})
	resume := make(chan struct{})
	done := make(chan error, 1)
	n := 0
	go func() {
		done <- c.Observe(ctx, ObserveFilter{Follow: true}, func(Flow) error {
			if n++; n == 1 {
				close(first)
				<-resume
			}
			return nil
		})
	}()
	// Publish until the follower has subscribed and holds one.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-first:
			break wait
		case <-tick.C:
			b.hub.Publish(Flow{Verdict: "dropped"})
		case <-ctx.Done():
			t.Fatal("no followed flow")
		}
	}
	// Far more than the socket's buffers and the subscription's queue
	// hold: every Publish returns although nobody reads.
	for i := range 50000 {
		b.hub.Publish(Flow{Verdict: "dropped", Bytes: i, Reason: strings.Repeat("x", 200)})
	}
	close(resume)
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "fell behind") {
		t.Fatalf("after %d flows: %v, want an error saying the follower fell behind", n, err)
	}
	if n >= 50000 {
		t.Fatalf("got all %d flows: the follower was never dropped", n)
	}
}

// shortTimeouts divides the read, idle and write limits that NewServer
// sets by 50 (10s, 1m and 30s become 200ms, 1.2s and 600ms), short enough
// to reach in a test; one it does not set stays off.
func shortTimeouts(s *Server) {
	s.srv.ReadTimeout /= 50
	s.srv.IdleTimeout /= 50
	s.srv.WriteTimeout /= 50
}

// rawRequest sends req on a new connection to sock and returns the
// connection, with a deadline far beyond the server's limits (it only
// turns a hang into a failure).
func rawRequest(t *testing.T, sock, req string) net.Conn {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	return conn
}

// A client that sends the headers and then stops partway through its body
// does not hold a handler (and its connection) for ever: it gets 400.
func TestSlowRequestBodyIsCut(t *testing.T) {
	_, sock := start(t, Options{}, shortTimeouts)
	conn := rawRequest(t, sock, "POST /v1/policy/trace HTTP/1.1\r\nHost: membraned\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"from_container\"")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a request whose body stopped: %v", err)
	}
	var eb ErrorBody
	json.NewDecoder(resp.Body).Decode(&eb)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(eb.Error, "did not arrive") {
		t.Fatalf("%d %q, want 400 saying the body did not arrive", resp.StatusCode, eb.Error)
	}
}

// A kept-alive connection that sends no next request is closed.
func TestIdleConnectionIsClosed(t *testing.T) {
	_, sock := start(t, Options{}, shortTimeouts)
	conn := rawRequest(t, sock, "GET /v1/status HTTP/1.1\r\nHost: membraned\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("status %d, close %v: want a kept-alive 200", resp.StatusCode, resp.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: %v, want it closed by the server (EOF)", err)
	}
}

// A follow stream lasts beyond the server's read limit, which is for
// reading requests.
func TestObserveFollowOutlivesReadTimeout(t *testing.T) {
	b, sock := start(t, Options{}, shortTimeouts)
	c := NewClient(sock)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	recv := make(chan Flow, 10)
	done := make(chan error, 1)
	go func() {
		done <- c.Observe(ctx, ObserveFilter{Follow: true}, func(f Flow) error { recv <- f; return nil })
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for len(recv) == 0 {
		select {
		case <-tick.C:
			b.hub.Publish(Flow{Verdict: "dropped"})
		case err := <-done:
			t.Fatalf("stream ended before the first flow: %v", err)
		case <-ctx.Done():
			t.Fatal("no followed flow")
		}
	}
	time.Sleep(2 * time.Second) // past the read, idle and write limits
	for len(recv) > 0 {
		<-recv
	}
	b.hub.Publish(Flow{Verdict: "audit"})
	select {
	case f := <-recv:
		if f.Verdict != "audit" {
			t.Fatalf("got %+v", f)
		}
	case err := <-done:
		t.Fatalf("stream ended after the read limit: %v", err)
	case <-ctx.Done():
		t.Fatal("no flow after the read limit")
	}
}

// Each observe stream holds a queue of its own and costs the publisher a
// send per record; one user may hold maxStreamsPerUser of them, the next
// gets 429, and a stream that ends gives its place back.
func TestObserveStreamsPerUserAreBounded(t *testing.T) {
	_, sock := start(t, Options{})
	open := func() (net.Conn, *http.Response) {
		conn := rawRequest(t, sock, "GET /v1/observe?follow=1 HTTP/1.1\r\nHost: membraned\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		return conn, resp
	}
	var conns []net.Conn
	for range maxStreamsPerUser {
		conn, resp := open()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("stream %d: %d, want 200", len(conns)+1, resp.StatusCode)
		}
		conns = append(conns, conn)
	}
	conn, resp := open()
	var eb ErrorBody
	json.NewDecoder(resp.Body).Decode(&eb)
	conn.Close()
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(eb.Error, "observe streams") {
		t.Fatalf("stream %d: %d %q, want 429 naming the limit", maxStreamsPerUser+1, resp.StatusCode, eb.Error)
	}
	conns[0].Close()
	for {
		conn, resp := open()
		conn.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("after one stream ended: %d", resp.StatusCode)
		}
		time.Sleep(20 * time.Millisecond) // the server sees the close
	}
}

// The requests that change something take no fields: one that sends some
// (an option this daemon does not know, or anything not JSON) gets 400 and
// changes nothing, rather than the change without the option.
func TestWriteRequestWithFieldsRefused(t *testing.T) {
	b, sock := start(t, Options{})
	for _, c := range []struct{ body, want string }{
		{`{"dry_run": true}`, `field "dry_run" (byte 2) is not known: this request takes no fields`},
		{`reload please`, "invalid JSON at byte 1"},
		{`{} {}`, "unexpected data after the JSON object"},
		{`[]`, "JSON array at byte 1: want one JSON object"},
	} {
		if status, msg := postRaw(t, sock, "/v1/policy/reload", c.body); status != http.StatusBadRequest || !strings.Contains(msg, c.want) {
			t.Errorf("body %q: %d %q, want 400 with %q", c.body, status, msg, c.want)
		}
	}
	if n := b.reloads.Load(); n != 0 {
		t.Fatalf("refused requests reloaded %d times", n)
	}
	// What the CLI sends, and no body at all (curl -X POST).
	for _, body := range []string{`{}`, ``} {
		if status, msg := postRaw(t, sock, "/v1/policy/reload", body); status != http.StatusOK {
			t.Fatalf("body %q: %d %q, want 200", body, status, msg)
		}
	}
	if n := b.reloads.Load(); n != 2 {
		t.Fatalf("reloads %d, want 2", n)
	}
}

// A member of the API group who is also in many other groups (hosts joined
// to a directory often give hundreds) may write: the supplementary groups
// are read whole, however many there are.
func TestGroupMemberWithManyGroupsMayWrite(t *testing.T) {
	testenv.RequireRoot(t)
	b, sock := start(t, Options{Mode: 0o666, Group: "nogroup"})
	groups := []uint32{65534}
	for g := uint32(70000); len(groups) < 300; g++ {
		groups = append(groups, g)
	}
	res := runAs(t, sock, &syscall.Credential{Uid: 65533, Gid: 65533, Groups: groups})
	if res["write"] != "ok" {
		t.Fatalf("member of nogroup among %d groups: %v", len(groups), res)
	}
	if n := b.reloads.Load(); n != 1 {
		t.Fatalf("backend saw %d writes, want 1", n)
	}
}

// A client that asks and then never reads does not hold its handler, the
// answer it was given and its place among its streams for ever: once a
// write has waited the server's write limit, the connection is cut.
func TestClientThatStopsReadingIsCut(t *testing.T) {
	b, sock := start(t, Options{}, shortTimeouts)
	for range 100 {
		b.hub.Publish(Flow{Verdict: "dropped", Reason: strings.Repeat("x", 20000)})
	}
	for _, path := range []string{"/v1/observe", "/v1/observe?follow=1"} {
		conn := rawRequest(t, sock, "GET "+path+" HTTP/1.1\r\nHost: membraned\r\n\r\n")
		time.Sleep(3 * time.Second) // five write limits, not reading
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s: read %d bytes and then %v, want the server to have cut the stream (unexpected EOF)", path, n, err)
		}
	}
}

// Go's encoding/json matches field names case-insensitively and lets the
// last of two equal keys win: a body that names a field twice, or in
// another case, is refused with where it is, never half-taken.
func TestRequestBodyKeysAreExactAndOnce(t *testing.T) {
	b, sock := start(t, Options{})
	for _, c := range []struct{ path, body, want string }{
		{"/v1/policy/trace", `{"From_Container": "a"}`, `field "From_Container" (byte 2) is not known: field names are case-sensitive, did you mean "from_container"?`},
		{"/v1/policy/trace", `{"from_container": "a", "from_container": "b"}`, `field "from_container" (byte 25) is given twice: first at byte 2`},
		{"/v1/policy/trace", `{"from_container": "a", "FROM_CONTAINER": "b"}`, `field "FROM_CONTAINER" (byte 25) is not known`},
		{"/v1/policy/trace", `{"from_labels": {"app": "a", "app": "b"}}`, `from_labels: key "app" (byte 30) is given twice: first at byte 18`},
		{"/v1/policy/trace", `{"http_headers": {"X-Tenant": "a", "x-tenant": "b"}}`, `http_headers: key "x-tenant" (byte 36) names the same header as "X-Tenant" (byte 19): header names are case-insensitive; join the values with "," in one`},
		{"/v1/policy/trace", `{"from_labels": {"app": "a"}, "to_labels": {"db": "x"}, "Port": 80}`, `field "Port" (byte 57) is not known: field names are case-sensitive, did you mean "port"?`},
		{"/v1/policy/reload", `{"Dry_Run": true}`, `field "Dry_Run" (byte 2) is not known`},
		{"/v1/policy/trace", "\n  {\"Port\": 80}", `field "Port" (byte 5) is not known`},
		{"/v1/policy/trace", `{"port": 80, "p\u006frt": 81}`, `field "port" (byte 14) is given twice: first at byte 2`},
	} {
		if status, msg := postRaw(t, sock, c.path, c.body); status != http.StatusBadRequest || !strings.Contains(msg, c.want) {
			t.Errorf("%s %s: %d %q, want 400 with %q", c.path, c.body, status, msg, c.want)
		}
	}
	if n := b.reloads.Load(); n != 0 {
		t.Fatalf("refused requests reloaded %d times", n)
	}
	// Labels are case-sensitive: two keys that differ in case are two labels.
	if status, msg := postRaw(t, sock, "/v1/policy/trace", `{"from_labels": {"app": "a", "App": "b"}, "to_labels": {}}`); status != http.StatusOK {
		t.Fatalf("labels differing in case: %d %q, want 200", status, msg)
	}
}

// Query parameters are held to the same rule as body fields: one a request
// does not know, or one given twice, is refused; a change is not carried
// out without an option it was sent with.
func TestQueryParametersAreKnownAndOnce(t *testing.T) {
	b, sock := start(t, Options{})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	for _, c := range []struct{ method, path, want string }{
		{"GET", "/v1/observe?verdict=dropped&verdict=allowed", `query parameter "verdict" is given twice`},
		{"GET", "/v1/observe?Verdict=dropped", `query parameter "Verdict" is not known: parameter names are case-sensitive, did you mean "verdict"?`},
		{"GET", "/v1/observe?verdikt=dropped", `query parameter "verdikt" is not known (known: container, direction, follow, last, type, verdict)`},
		{"GET", "/v1/status?verbose=1", `query parameter "verbose" is not known: /v1/status takes none`},
		{"GET", "/v1/endpoints/api?x=1", `query parameter "x" is not known`},
		{"POST", "/v1/policy/reload?dry_run=1", `query parameter "dry_run" is not known: /v1/policy/reload takes none`},
		{"POST", "/v1/policy/trace?port=80", `query parameter "port" is not known`},
	} {
		req, _ := http.NewRequest(c.method, "http://membraned"+c.path, strings.NewReader(""))
		if status, msg := answer(t)(hc.Do(req)); status != http.StatusBadRequest || !strings.Contains(msg, c.want) {
			t.Errorf("%s %s: %d %q, want 400 with %q", c.method, c.path, status, msg, c.want)
		}
	}
	if n := b.reloads.Load(); n != 0 {
		t.Fatalf("refused requests reloaded %d times", n)
	}
	if status, msg := answer(t)(hc.Get("http://membraned/v1/observe?verdict=dropped&last=3")); status != http.StatusOK {
		t.Fatalf("known parameters: %d %q", status, msg)
	}
}

// A read takes no body: one sent with a GET (an option the daemon does
// not know, in a place it does not look) is refused, not ignored.
func TestReadWithABodyRefused(t *testing.T) {
	_, sock := start(t, Options{})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	for _, path := range []string{"/v1/status", "/v1/endpoints", "/v1/endpoints/api", "/v1/identities", "/v1/policy", "/v1/observe"} {
		req, _ := http.NewRequest("GET", "http://membraned"+path, strings.NewReader(`{"verbose": true}`))
		if status, msg := answer(t)(hc.Do(req)); status != http.StatusBadRequest || !strings.Contains(msg, "GET "+path+" takes no body") {
			t.Errorf("GET %s with a body: %d %q, want 400 saying it takes none", path, status, msg)
		}
		req, _ = http.NewRequest("GET", "http://membraned"+path, nil)
		if status, msg := answer(t)(hc.Do(req)); status != http.StatusOK {
			t.Errorf("GET %s: %d %q", path, status, msg)
		}
	}
}

// An api_group that does not exist leaves the socket to root alone; the
// daemon says so, with the group's name, rather than let the group's
// members meet a bare permission error.
func TestMissingAPIGroupIsLogged(t *testing.T) {
	testenv.RequireRoot(t)
	var buf strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), nil))
	_, sock := start(t, Options{Group: "membrane-no-such-group", Logger: log})
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600 without the group", fi.Mode().Perm())
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(buf.String(), "level=WARN") || !strings.Contains(buf.String(), `membrane-no-such-group`) || !strings.Contains(buf.String(), "only root") {
		t.Fatalf("log %q: want a warning naming the group and saying only root may use the API", buf.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// A path the API does not have, or a method its route does not take, is
// answered like every other error: JSON with a message (not net/http's
// plain text), 404 or 405, and a 405 names the methods in Allow. The
// client reads the message, so the CLI prints it.
func TestUnknownRouteAndMethodAnswerJSON(t *testing.T) {
	_, sock := start(t, Options{})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	for _, c := range []struct {
		method, path string
		code         int
		allow, want  string
	}{
		{"GET", "/v1/nope", 404, "", `no API route GET /v1/nope`},
		{"GET", "/", 404, "", `no API route GET /`},
		{"POST", "/v2/status", 404, "", `no API route POST /v2/status`},
		{"POST", "/v1/status", 405, "GET, HEAD", `POST /v1/status: method not allowed; /v1/status takes GET, HEAD`},
		{"DELETE", "/v1/endpoints/api", 405, "GET, HEAD", `DELETE /v1/endpoints/api: method not allowed`},
		{"GET", "/v1/policy/reload", 405, "POST", `GET /v1/policy/reload: method not allowed; /v1/policy/reload takes POST`},
		{"PUT", "/v1/policy/trace", 405, "POST", `takes POST`},
	} {
		req, _ := http.NewRequest(c.method, "http://membraned"+c.path, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var eb ErrorBody
		if err := json.Unmarshal(body, &eb); err != nil || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: %s answer %q is not JSON (%v)", c.method, c.path, resp.Header.Get("Content-Type"), body, err)
			continue
		}
		if resp.StatusCode != c.code || !strings.Contains(eb.Error, c.want) || resp.Header.Get("Allow") != c.allow {
			t.Errorf("%s %s: %d %q Allow %q, want %d with %q, Allow %q", c.method, c.path, resp.StatusCode, eb.Error, resp.Header.Get("Allow"), c.code, c.want, c.allow)
		}
	}
	// What the CLI sees: the daemon's message, with the status code.
	err := NewClient(sock).do(context.Background(), http.MethodGet, "/v1/nope", nil, nil)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 404 || !strings.Contains(se.Message, "no API route GET /v1/nope") {
		t.Fatalf("client: %v", err)
	}
}

// A --socket that names a file or a directory is not "membraned is not
// running" (the kernel refuses the connection to it as it does to a
// stale socket): the client says what the path is.
func TestClientSaysWhenThePathIsNotASocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "membrane.hcl")
	os.WriteFile(file, []byte("audit = true\n"), 0o644)
	for path, want := range map[string]string{
		file: file + " is a regular file, not a socket",
		dir:  dir + " is a directory, not a socket",
	} {
		_, err := NewClient(path).Status(context.Background())
		if err == nil || errors.Is(err, ErrDaemonDown) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "--socket") {
			t.Errorf("%s: %v, want %q and what to pass instead", path, err, want)
		}
	}
	// A socket nobody listens on (a crashed daemon's) is still "not running".
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := NewClient(stale).Status(context.Background()); !errors.Is(err, ErrDaemonDown) {
		t.Errorf("stale socket: %v, want ErrDaemonDown", err)
	}
}

// A --socket that names another HTTP server's socket (Docker's is the
// likely slip) answers errors that are not membraned's: the client says
// that the socket may be the wrong one, not only "membraned answered 404".
func TestClientSaysWhenTheServerIsNotMembraned(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "other.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"message":"page not found"}`)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	_, err = NewClient(sock).Status(context.Background())
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 404 || !strings.Contains(err.Error(), sock+" answered 404 Not Found, not as membraned answers") || !strings.Contains(err.Error(), "--socket") {
		t.Fatalf("error %v", err)
	}
}

// A path that is not written clean (a doubled slash, a dot segment) is
// answered as a path the API does not have, in JSON, not with net/http's
// HTML redirect: the API answers nothing but JSON.
func TestUncleanPathAnswersJSONNotARedirect(t *testing.T) {
	_, sock := start(t, Options{})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer hc.CloseIdleConnections()
	for p, want := range map[string]string{
		"/v1//status":          `no API route GET /v1//status: did you mean /v1/status?`,
		"/v1/../v1/status":     `no API route GET /v1/../v1/status: did you mean /v1/status?`,
		"/v1/endpoints/..":     `no API route GET /v1/endpoints/..: membraned's API has GET /v1/status,`,
		"/v1/endpoints/./web1": `did you mean /v1/endpoints/web1?`,
	} {
		req, _ := http.NewRequest("GET", "http://membraned/", nil)
		req.URL.Path, req.URL.RawPath = p, p
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var eb ErrorBody
		err = json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if resp.StatusCode != 404 || err != nil || !strings.Contains(eb.Error, want) {
			t.Errorf("GET %s: %d %s %q (%v), want 404 JSON with %q", p, resp.StatusCode, resp.Header.Get("Content-Type"), eb.Error, err, want)
		}
	}
}

// An endpoint reference holding an escaped slash and dots is one segment
// of the path, as the mux sees it: it reaches the endpoint handler.
func TestEscapedDotsInAReferenceReachTheHandler(t *testing.T) {
	_, sock := start(t, Options{})
	_, err := NewClient(sock).Endpoint(context.Background(), "../status")
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 404 || !strings.Contains(se.Message, `no endpoint "../status"`) {
		t.Fatalf("endpoint ../status: %v", err)
	}
}
