package builtin

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

func startEngine(t *testing.T, up netip.AddrPort, events chan proxy.Event) string {
	t.Helper()
	testenv.RequireRoot(t)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{
		Listeners:   []net.Listener{l},
		Resolver:    conformance.AllowAll(),
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return up, nil },
		Events: func(ev proxy.Event) {
			if events != nil {
				events <- ev
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return l.Addr().String()
}

// The upstream closes idle keep-alive connections quickly; the proxy's next
// request on the same client connection must not fail for it.
func TestUpstreamClosingIdleConnectionIsRetried(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int32
	srv := &http.Server{
		Handler:     http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		IdleTimeout: 50 * time.Millisecond,
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		},
	}
	go srv.Serve(l)
	defer srv.Close()
	addr := startEngine(t, l.Addr().(*net.TCPAddr).AddrPort(), nil)

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		fmt.Fprintf(c, "GET /x%d HTTP/1.1\r\nHost: svc\r\n\r\n", i)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("request %d after the upstream dropped the idle connection: %d %q", i, resp.StatusCode, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := conns.Load(); n < 2 {
		t.Fatalf("upstream saw %d connections; the test did not exercise a dropped keep-alive", n)
	}
}

func TestUpstreamDownIs502WithErrorEvent(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()
	events := make(chan proxy.Event, 4)
	addr := startEngine(t, dead, events)
	resp, err := http.Get("http://" + addr + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "upstream") {
		t.Fatalf("upstream down: %d %q, want 502", resp.StatusCode, body)
	}
	ev := <-events
	if ev.Verdict != proxy.VerdictError || ev.Status != 502 || ev.Error == "" {
		t.Fatalf("event %+v, want verdict error, status 502 and the error", ev)
	}
}

// A client that goes away in the middle of a large download leaves the
// proxy serving others.
func TestClientAbortMidBody(t *testing.T) {
	up := conformance.StartUpstream(t)
	events := make(chan proxy.Event, 16)
	addr := startEngine(t, up, events)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /download/x?n=%d HTTP/1.1\r\nHost: svc\r\n\r\n", 256<<20)
	buf := make([]byte, 1<<20)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case ev := <-events:
		if ev.Verdict != proxy.VerdictError {
			t.Errorf("aborted download event %+v, want verdict error", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event for the aborted download")
	}
	resp, err := http.Get("http://" + addr + "/public/after")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after an aborted download: %d", resp.StatusCode)
	}
}

// A kept-alive upstream connection that breaks after the request went out
// may have run it: only a request whose method is idempotent is sent again
// (RFC 9110 9.2.2, RFC 9112 9.3.1). A POST is answered 502 and reaches the
// server once.
func TestUpstreamBreakRetriesOnlyIdempotentRequests(t *testing.T) {
	for _, c := range []struct {
		method string
		want   int // the client's status
		runs   int // how often the server saw the second request
	}{
		{"GET", 200, 2},
		{"DELETE", 200, 2},
		{"POST", 502, 1},
		{"PATCH", 502, 1},
	} {
		t.Run(c.method, func(t *testing.T) {
			l, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			var runs atomic.Int32
			go func() {
				for {
					conn, err := l.Accept()
					if err != nil {
						return
					}
					go func() {
						defer conn.Close()
						br := bufio.NewReader(conn)
						for {
							req, err := http.ReadRequest(br)
							if err != nil {
								return
							}
							io.Copy(io.Discard, req.Body)
							if req.URL.Path == "/second" && runs.Add(1) == 1 {
								// Run, then break before answering.
								return
							}
							io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
						}
					}()
				}
			}()
			addr := startEngine(t, l.Addr().(*net.TCPAddr).AddrPort(), nil)
			cl, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			br := bufio.NewReader(cl)
			for i, line := range []string{"GET /first", c.method + " /second"} {
				fmt.Fprintf(cl, "%s HTTP/1.1\r\nHost: svc\r\n\r\n", line)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if i == 1 && resp.StatusCode != c.want {
					t.Errorf("%s after the kept-alive upstream broke: %d, want %d", c.method, resp.StatusCode, c.want)
				}
			}
			if n := runs.Load(); int(n) != c.runs {
				t.Errorf("the server ran %s /second %d times, want %d", c.method, n, c.runs)
			}
		})
	}
}
