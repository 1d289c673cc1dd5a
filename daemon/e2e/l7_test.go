package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

// l7Policy: the api answers on 80. role=client may GET /public* only;
// admin=yes (also role=client) has a second rule without http, so its
// requests are unrestricted; the host may GET /public* (the path is what
// the keep-alive test edits); role=other has no rule at all.
const l7Policy = `
policy "api" {
  selector = "app=api"
  ingress {
    from_endpoints = ["role=client"]
    ports          = ["80/tcp"]
    http {
      method = "GET"
      path   = "/public.*"
    }
  }
  ingress {
    from_endpoints = ["admin=yes"]
    ports          = ["80/tcp"]
  }
  ingress {
    from_entities = ["host"]
    ports         = ["80/tcp"]
    http {
      method = "GET"
      path   = "HOSTPATH"
    }
  }
}
`

func l7PolicyWith(hostPath string) string {
	return strings.ReplaceAll(l7Policy, "HOSTPATH", hostPath)
}

// httpStatus sends one HTTP/1.0 request with busybox nc from container
// and returns the response's status code (0: no response at all).
func (e *env) httpStatus(container, addr, method, path string) int {
	host, port, _ := net.SplitHostPort(addr)
	// stdin stays open a second: a half-close right after the request
	// reads as an aborted request to Go's HTTP server (the proxy).
	script := fmt.Sprintf("(printf '%s %s HTTP/1.0\\r\\nHost: api\\r\\n\\r\\n'; sleep 1) | nc -w 2 %s %s 2>/dev/null | head -1", method, path, host, port)
	out, _ := exec.Command("docker", "exec", container, "sh", "-c", script).Output()
	f := strings.Fields(string(out))
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/") {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// l7Containers starts the L7 tests' containers and waits for their
// endpoints: api (busybox httpd serving /public and /secret on port 80,
// published on hostPort), a client (role=client), an admin client
// (role=client, admin=yes) and another (role=other).
func (e *env) l7Containers() (api, client, admin, other, hostPort string) {
	hostPort = strings.TrimPrefix(freePort(e.t), "127.0.0.1:")
	api = e.run("api", []string{"app=api"},
		"mkdir -p /var/www && echo public > /var/www/public && echo secret > /var/www/secret; httpd -f -p 80 -h /var/www",
		"-p", hostPort+":80")
	client = e.idle("client", "role=client")
	admin = e.idle("admin", "role=client", "admin=yes")
	other = e.idle("other", "role=other")
	for _, c := range []string{api, client, admin, other} {
		e.endpoint(c)
	}
	return api, client, admin, other, hostPort
}

// TestL7 is the L7 path end to end with real containers and the built-in
// engine: verdicts per request for containers, the host and a published
// port; no connection at all without an L3 rule; a rule without http
// unrestricts; every verdict in `membrane observe --type l7` and the
// metrics; a policy edit judges the next request of a kept-alive
// connection.
func TestL7(t *testing.T) { testL7(t, "builtin") }

// TestL7Envoy is TestL7 with the managed Envoy (only where `envoy` is on
// PATH).
func TestL7Envoy(t *testing.T) {
	testenv.RequireEnvoy(t)
	testL7(t, "envoy")
}

func testL7(t *testing.T, engine string) {
	metricsAddr := freePort(t)
	_, l7Port, _ := net.SplitHostPort(freePort(t))
	e := newEnv(t, envOpts{metrics: metricsAddr, extraConfig: fmt.Sprintf("l7 {\n  engine = %q\n  port = %s\n}\n", engine, l7Port)})
	e.writePolicy("api.hcl", l7PolicyWith("/public.*"))
	e.startDaemon()
	if st := e.status(); st.L7Engine != engine || strconv.Itoa(int(st.L7Port)) != l7Port {
		t.Errorf("status shows l7 %q on %d, want %s on %s (problems %v)", st.L7Engine, st.L7Port, engine, l7Port, st.Errors)
	}
	apiC, client, admin, other, hostPort := e.l7Containers()
	apiAddr := net.JoinHostPort(e.ip(apiC), "80")
	gw := e.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", e.network)
	published := net.JoinHostPort(gw, hostPort)

	// The first request may race the last peer-policy write.
	e.eventually("client reaches the api through the proxy", 10*time.Second, func() error {
		if s := e.httpStatus(client, apiAddr, "GET", "/public"); s != 200 {
			return fmt.Errorf("GET /public: status %d", s)
		}
		return nil
	})

	// anyButDenied: the server's own answer (busybox httpd has no POST
	// for files), anything but the proxy's 403.
	const anyButDenied = -1
	type req struct {
		who, from, addr, method, path string
		want                          int
	}
	for _, r := range []req{
		{"client", client, apiAddr, "GET", "/public", 200},
		{"client", client, apiAddr, "GET", "/secret", 403},
		{"client", client, apiAddr, "POST", "/public", 403},
		{"admin (rule without http)", admin, apiAddr, "GET", "/secret", 200},
		{"admin (rule without http)", admin, apiAddr, "POST", "/public", anyButDenied},
		{"other (no L3 rule)", other, apiAddr, "GET", "/public", 0},
		{"client via published port", client, published, "GET", "/public", 200},
		{"client via published port", client, published, "GET", "/secret", 403},
	} {
		if got := e.httpStatus(r.from, r.addr, r.method, r.path); got != r.want && !(r.want == anyButDenied && got != 403 && got != 0) {
			t.Errorf("%s: %s http://%s%s: status %d, want %d", r.who, r.method, r.addr, r.path, got, r.want)
		}
	}

	// From the host (identity host), on one kept-alive connection.
	var conns []string
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, DisableCompression: true}}
	defer hc.CloseIdleConnections()
	hostGet := func(path string) (int, bool) {
		t.Helper()
		reused := false
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			reused = i.Reused
			conns = append(conns, i.Conn.LocalAddr().String())
		}})
		rq, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+apiAddr+path, nil)
		resp, err := hc.Do(rq)
		if err != nil {
			t.Errorf("host GET %s: %v", path, err)
			return 0, reused
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, reused
	}
	if s, _ := hostGet("/public"); s != 200 {
		t.Errorf("host GET /public: %d, want 200", s)
	}
	if s, reused := hostGet("/secret"); s != 403 || !reused {
		t.Errorf("host GET /secret: %d (reused connection %v), want 403 on the kept-alive connection", s, reused)
	}
	// The edit: the host may now GET /secret* only.
	e.writePolicy("api.hcl", l7PolicyWith("/secret.*"))
	e.waitRevision(e.status().PolicyRevision, false)
	if s, reused := hostGet("/public"); s != 403 || !reused {
		t.Errorf("after the edit, host GET /public: %d (reused connection %v), want 403 on the same connection", s, reused)
	}
	if s, reused := hostGet("/secret"); s != 200 || !reused {
		t.Errorf("after the edit, host GET /secret: %d (reused connection %v), want 200 on the same connection", s, reused)
	}
	if len(conns) > 1 && conns[0] != conns[len(conns)-1] {
		t.Errorf("the host's requests used several connections: %v", conns)
	}

	// `membrane observe --type l7` shows every request's verdict.
	var denied, forwarded *api.Flow
	e.eventually("l7 records", 5*time.Second, func() error {
		denied, forwarded = nil, nil
		for _, f := range e.observe(api.ObserveFilter{Type: "l7", Container: client}) {
			if f.Type != api.FlowL7 || f.HTTP == nil {
				return fmt.Errorf("not an l7 record: %s", dump(f))
			}
			switch {
			case f.HTTP.Path == "/secret" && f.Verdict == "denied" && denied == nil:
				denied = &f
			case f.HTTP.Path == "/public" && f.Verdict == "forwarded" && forwarded == nil:
				forwarded = &f
			}
		}
		if denied == nil || forwarded == nil {
			return fmt.Errorf("denied %v forwarded %v in %s", denied != nil, forwarded != nil, dump(e.observe(api.ObserveFilter{Type: "l7"})))
		}
		return nil
	})
	if h := denied.HTTP; h.Method != "GET" || h.Status != 403 || h.Host != "api" || h.Policy != "api" || denied.Source.Container != client || denied.Dest.Container != apiC || denied.Dest.Port != 80 {
		t.Errorf("denied record %s", dump(denied))
	}
	if h := forwarded.HTTP; h.Method != "GET" || h.Status != 200 || forwarded.Rule == nil || forwarded.Rule.Policy != "api" || forwarded.Rule.Block != "ingress" || forwarded.Rule.Line == 0 {
		t.Errorf("forwarded record %s", dump(forwarded))
	}
	// Both were decided by the api endpoint's ingress rules.
	apiEP := e.endpoint(apiC).ID
	for _, f := range []*api.Flow{denied, forwarded} {
		if f.Direction != "ingress" || f.Endpoint != apiEP {
			t.Errorf("record %s: want direction ingress and endpoint %d (the api's)", dump(f), apiEP)
		}
	}
	// The CLI renders the same records: `membrane observe --type l7`.
	cli := goBuild(t, "github.com/membrane-fw/membrane/cmd/membrane")
	out, err := exec.Command(cli, "observe", "--type", "l7", "--container", client, "--socket", e.sock).CombinedOutput()
	if err != nil {
		t.Fatalf("membrane observe --type l7: %v: %s", err, out)
	}
	for _, want := range []string{"denied", "403", "GET api /secret", "forwarded", "200", "GET api /public", `policy "api" ingress`, "l7 ingress", client} {
		if !strings.Contains(string(out), want) {
			t.Errorf("membrane observe --type l7 lacks %q:\n%s", want, out)
		}
	}
	hostRecs := 0
	for _, f := range e.observe(api.ObserveFilter{Type: "l7"}) {
		if f.Source.Labels["reserved"] == "host" {
			hostRecs++
		}
		if f.Source.Container == other {
			t.Errorf("a client without an L3 rule reached the proxy: %s", dump(f))
		}
	}
	if hostRecs < 4 {
		t.Errorf("%d l7 records from the host, want 4", hostRecs)
	}
	for _, f := range e.observe(api.ObserveFilter{Type: "l3"}) {
		if f.Type == api.FlowL7 {
			t.Errorf("--type l3 returned an l7 record %s", dump(f))
		}
	}
	// Metrics: the engine's counters are in membraned's registry and count
	// what observe shows.
	byVerdict := map[string]float64{}
	for _, f := range e.observe(api.ObserveFilter{Type: "l7"}) {
		byVerdict[f.Verdict]++
	}
	for _, v := range []string{"denied", "forwarded"} {
		got, ok := scrape(t, metricsAddr, `membrane_proxy_requests_total{engine="`+engine+`",verdict="`+v+`"}`)
		if !ok || got != byVerdict[v] || got < 3 {
			t.Errorf("metric of %s requests %v (present %v); observe has %v", v, got, ok, byVerdict[v])
		}
	}
}

// TestL7IPv6 is the L7 path over IPv6, on a Docker network with an IPv6
// subnet: per-request verdicts for a container, for the host and through a
// port published on the host's IPv6 address, a rule without http
// unrestricted, no connection at all without an L3 rule, and records that
// carry the IPv6 peers.
func TestL7IPv6(t *testing.T) {
	e := newEnv(t, envOpts{ipv6: true})
	e.writePolicy("api.hcl", l7PolicyWith("/public.*"))
	e.startDaemon()
	apiC, client, admin, other, hostPort := e.l7Containers()
	apiIP := e.ip6(apiC)
	apiAddr := net.JoinHostPort(apiIP, "80")

	e.eventually("client reaches the api over IPv6 through the proxy", 10*time.Second, func() error {
		if s := e.httpStatus(client, apiAddr, "GET", "/public"); s != 200 {
			return fmt.Errorf("GET /public: status %d", s)
		}
		return nil
	})
	for _, r := range []struct {
		who, from, method, path string
		want                    int
	}{
		{"client", client, "GET", "/secret", 403},
		{"client", client, "POST", "/public", 403},
		{"admin (rule without http)", admin, "GET", "/secret", 200},
		{"other (no L3 rule)", other, "GET", "/public", 0},
	} {
		if got := e.httpStatus(r.from, apiAddr, r.method, r.path); got != r.want {
			t.Errorf("%s: %s http://%s%s: status %d, want %d", r.who, r.method, apiAddr, r.path, got, r.want)
		}
	}
	// From the host, over the bridge's IPv6 address.
	hc := &http.Client{Timeout: 3 * time.Second}
	for path, want := range map[string]int{"/public": 200, "/secret": 403} {
		resp, err := hc.Get("http://" + apiAddr + path)
		if err != nil {
			t.Errorf("host GET %s: %v", path, err)
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("host GET %s over IPv6: %d, want %d", path, resp.StatusCode, want)
		}
	}
	// Through the published port on the host's IPv6 loopback. Docker 20.10
	// forwards IPv6 published ports with its userland proxy (no ip6tables),
	// so the connection reaches the container from the host: the host's
	// rules judge each request.
	published := net.JoinHostPort("::1", hostPort)
	for path, want := range map[string]int{"/public": 200, "/secret-published": 403} {
		resp, err := hc.Get("http://" + published + path)
		if err != nil {
			t.Errorf("GET %s through the published port [::1]:%s: %v", path, hostPort, err)
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s through the published port [::1]:%s: %d, want %d", path, hostPort, resp.StatusCode, want)
		}
	}
	e.eventually("the published port's denied request in observe", 5*time.Second, func() error {
		for _, f := range e.observe(api.ObserveFilter{Type: "l7"}) {
			if f.HTTP != nil && f.HTTP.Path == "/secret-published" && f.Verdict == "denied" {
				if f.Source.Identity != 1 || f.Direction != "ingress" {
					return fmt.Errorf("record %s: want the host (identity 1) judged by the api's ingress rules", dump(f))
				}
				return nil
			}
		}
		return fmt.Errorf("none in %s", dump(e.observe(api.ObserveFilter{Type: "l7"})))
	})

	var denied *api.Flow
	e.eventually("the IPv6 client's denied request in observe", 5*time.Second, func() error {
		for _, f := range e.observe(api.ObserveFilter{Type: "l7", Container: client}) {
			if f.HTTP != nil && f.HTTP.Path == "/secret" && f.Verdict == "denied" {
				denied = &f
				return nil
			}
		}
		return fmt.Errorf("none in %s", dump(e.observe(api.ObserveFilter{Type: "l7"})))
	})
	if denied.Dest.IP != apiIP || denied.Dest.Port != 80 || denied.Source.IP != e.ip6(client) || denied.Direction != "ingress" || denied.HTTP.Policy != "api" {
		t.Errorf("denied record %s: want %s -> [%s]:80, decided by the api's ingress rules", dump(denied), e.ip6(client), apiIP)
	}
	for _, f := range e.observe(api.ObserveFilter{Type: "l7"}) {
		if f.Source.Container == other {
			t.Errorf("a client without an L3 rule reached the proxy: %s", dump(f))
		}
	}
}

// TestL7H2C is HTTP/2 cleartext (prior knowledge) through the real
// redirect: the host's streams on one connection to a container's h2c
// server are judged one by one, the allowed ones reach the server as
// HTTP/2 on an upstream connection marked with the host's identity (the
// server's ingress program takes it from the mark and does not redirect it
// again), and a policy edit judges the next stream of the same connection.
func TestL7H2C(t *testing.T) {
	bin := goBuild(t, "./testdata/h2cserver")
	e := newEnv(t, envOpts{})
	e.writePolicy("api.hcl", l7PolicyWith("/public.*"))
	e.startDaemon()
	apiC := e.run("api", []string{"app=api"}, "exec /h2cserver", "-v", bin+":/h2cserver:ro")
	e.endpoint(apiC)
	apiAddr := net.JoinHostPort(e.ip(apiC), "80")

	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &h2c}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 3 * time.Second}
	var conns []string
	get := func(path string) (status int, body string, err error) {
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			conns = append(conns, i.Conn.LocalAddr().String())
		}})
		rq, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+apiAddr+path, nil)
		resp, err := hc.Do(rq)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.ProtoMajor != 2 {
			return 0, "", fmt.Errorf("answered over %s, not HTTP/2", resp.Proto)
		}
		return resp.StatusCode, string(b), nil
	}
	e.eventually("the host reaches the h2c server through the proxy", 10*time.Second, func() error {
		s, body, err := get("/public/a")
		if err != nil || s != 200 || body != "HTTP/2.0 /public/a\n" {
			return fmt.Errorf("GET /public/a: %d %q %v", s, body, err)
		}
		return nil
	})
	n0 := len(conns) - 1 // the connection of the first answer
	if s, body, err := get("/secret"); err != nil || s != 403 || !strings.Contains(body, "api") {
		t.Errorf("GET /secret: %d %q %v; want the proxy's 403 naming policy api", s, body, err)
	}
	// The edit: the host may now GET /secret* only.
	e.writePolicy("api.hcl", l7PolicyWith("/secret.*"))
	e.waitRevision(e.status().PolicyRevision, false)
	if s, _, err := get("/public/a"); err != nil || s != 403 {
		t.Errorf("after the edit, GET /public/a: %d %v, want 403", s, err)
	}
	if s, body, err := get("/secret"); err != nil || s != 200 || body != "HTTP/2.0 /secret\n" {
		t.Errorf("after the edit, GET /secret: %d %q %v, want 200 from the server", s, body, err)
	}
	for _, c := range conns[n0:] {
		if c != conns[n0] {
			t.Errorf("the streams from the first answer on used several connections: %v", conns[n0:])
			break
		}
	}
	var h2Records int
	for _, f := range e.observe(api.ObserveFilter{Type: "l7"}) {
		if f.HTTP != nil && f.HTTP.Proto == "HTTP/2.0" {
			h2Records++
		}
	}
	if h2Records < 4 {
		t.Errorf("%d HTTP/2 records in observe, want at least 4: %s", h2Records, dump(e.observe(api.ObserveFilter{Type: "l7"})))
	}
}

// TestL7ConnectionLimit: membrane.hcl's l7.max_connections_per_source
// reaches the engine; a connection over it, through the real redirect, is
// reset at once, and the refusal is in the metrics.
func TestL7ConnectionLimit(t *testing.T) {
	metricsAddr := freePort(t)
	_, l7Port, _ := net.SplitHostPort(freePort(t))
	e := newEnv(t, envOpts{metrics: metricsAddr,
		extraConfig: fmt.Sprintf("l7 {\n  engine = \"builtin\"\n  port = %s\n  max_connections_per_source = 2\n}\n", l7Port)})
	e.writePolicy("api.hcl", l7PolicyWith("/public.*"))
	e.startDaemon()
	apiC := e.run("api", []string{"app=api"}, "mkdir -p /var/www && echo public > /var/www/public; httpd -f -p 80 -h /var/www")
	e.endpoint(apiC)
	apiAddr := net.JoinHostPort(e.ip(apiC), "80")

	// From the host, whose connections all come from the bridge's address.
	get := func(c net.Conn) error { return conformance.GetOK(c, "/public") }
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", apiAddr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var held []net.Conn
	e.eventually("two kept-alive connections from the host", 10*time.Second, func() error {
		for _, c := range held {
			c.Close()
		}
		held = []net.Conn{dial(), dial()}
		for _, c := range held {
			if err := get(c); err != nil {
				return err
			}
		}
		return nil
	})
	// Refused: reset at its first request or, when the reset beats
	// connect's return, at the dial.
	if c, err := net.DialTimeout("tcp", apiAddr, 3*time.Second); err == nil {
		if err := get(c); err == nil {
			t.Error("a third connection from the host was served; l7.max_connections_per_source is 2")
		}
		c.Close()
	}
	got, ok := scrape(t, metricsAddr, `membrane_proxy_connections_refused_total{engine="builtin",reason="max_connections_per_source"}`)
	if !ok || got < 1 {
		t.Errorf("refused connections metric %v (present %v), want at least 1", got, ok)
	}
	// The held ones still work.
	for _, c := range held {
		if err := get(c); err != nil {
			t.Errorf("a connection within the limit, after the refusal: %v", err)
		}
	}
}

// TestL7EngineDownFailsClosed: when the proxy cannot start (its port is
// taken), status says so, connections that policy sends to the proxy are
// dropped, and plain allows still pass.
func TestL7EngineDownFailsClosed(t *testing.T) {
	squat, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer squat.Close()
	port := squat.Addr().(*net.TCPAddr).Port
	e := newEnv(t, envOpts{extraConfig: fmt.Sprintf("l7 {\n  engine = \"builtin\"\n  port = %d\n}\n", port)})
	e.writePolicy("api.hcl", l7PolicyWith("/public.*"))
	e.startDaemon()
	st := e.status()
	if st.L7Engine != "" || !strings.Contains(strings.Join(st.Errors, "\n"), "proxy port") {
		t.Errorf("status: l7 %q, problems %v; want no engine and the listen error", st.L7Engine, st.Errors)
	}
	apiC := e.run("api", []string{"app=api"}, "mkdir -p /var/www && echo public > /var/www/public; httpd -f -p 80 -h /var/www")
	client := e.idle("client", "role=client")
	admin := e.idle("admin", "role=client", "admin=yes")
	for _, c := range []string{apiC, client, admin} {
		e.endpoint(c)
	}
	apiAddr := net.JoinHostPort(e.ip(apiC), "80")
	e.eventually("plain allow passes", 10*time.Second, func() error {
		if s := e.httpStatus(admin, apiAddr, "GET", "/public"); s != 200 {
			return fmt.Errorf("admin GET /public: %d", s)
		}
		return nil
	})
	if s := e.httpStatus(client, apiAddr, "GET", "/public"); s != 0 {
		t.Errorf("client GET /public with the proxy down: status %d, want no connection", s)
	}
}
