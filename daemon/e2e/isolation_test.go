package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
)

// isolationPolicy: app=web may send HTTP to app=db on 8080 and 9000 (its
// egress rules judge it) and connect to 8081, where app=db's ingress rules
// judge HTTP; db accepts web on 8080 and 9000 without rules of its own.
const isolationPolicy = `
policy "web" {
  selector = "app=web"
  egress {
    to_endpoints = ["app=db"]
    ports        = ["8080/tcp", "9000/tcp"]
    http {}
  }
  egress {
    to_endpoints = ["app=db"]
    ports        = ["8081/tcp"]
  }
}
policy "db" {
  selector = "app=db"
  ingress {
    from_endpoints = ["app=web"]
    ports          = ["8081/tcp"]
    http {}
  }
  ingress {
    from_endpoints = ["app=web"]
    ports          = ["8080/tcp", "9000/tcp"]
  }
}
`

// dbServer answers HTTP on 8080 and 8081 and keeps what it receives on
// 9000 in /tmp/recv (nc, which never answers).
const dbServer = "echo ok > /var/www/index.html; httpd -p 8080 -h /var/www; httpd -p 8081 -h /var/www; sleep 600 | nc -l -p 9000 > /tmp/recv; sleep 600"

// isolatedRequest sends one HTTP/1.0 request from container to ip:9000
// (the server container's nc, which records what it receives and never
// answers) and returns what came back and how long it took.
func (e *env) isolatedRequest(container, ip string) (string, time.Duration) {
	// stdin stays open 2 s (see httpStatus); a client that hangs is cut
	// at 8 s.
	script := fmt.Sprintf("timeout 8 sh -c \"(printf 'GET /x HTTP/1.0\\r\\nHost: db\\r\\n\\r\\n'; sleep 2) | nc -w 3 %s 9000\" 2>&1", ip)
	start := time.Now()
	out, _ := exec.Command("docker", "exec", container, "sh", "-c", script).CombinedOutput()
	return string(out), time.Since(start)
}

// received is how many bytes the server container's nc on 9000 got.
func (e *env) received(server string) int {
	out, err := exec.Command("docker", "exec", server, "sh", "-c", "wc -c < /tmp/recv").CombinedOutput()
	if err != nil {
		e.t.Fatalf("reading %s's /tmp/recv: %v: %s", server, err, out)
	}
	var n int
	fmt.Sscan(strings.TrimSpace(string(out)), &n)
	return n
}

// TestL7KeepsDockerIsolation: an egress http rule must not carry a
// container past Docker's isolation. web (on network A) may send HTTP to
// app=db by policy, but db is on network B, and Docker drops traffic
// between its networks; the proxy, a host process, would connect them all
// the same. So would it two containers on a network without
// inter-container communication (C, enable_icc=false). The client is
// refused promptly with a 403 that says why, the server never sees a byte,
// and `membrane observe` records the reason; a db on web's own network is
// reached through the proxy as before. The reverse needs no check: a
// connection that only db's ingress rules send to the proxy is taken at
// db's veth, which Docker delivers to from db's networks only.
func TestL7KeepsDockerIsolation(t *testing.T) {
	e := newEnv(t, envOpts{networks: map[string][]string{
		"b": nil,
		"c": {"com.docker.network.bridge.enable_icc=false"},
	}})
	e.writePolicy("web.hcl", isolationPolicy)
	e.startDaemon()
	web := e.idle("web", "app=web")
	peer := e.run("peer", []string{"app=db"}, dbServer) // on web's network
	db := e.run("db", []string{"app=db"}, dbServer, "--network", e.nets["b"])
	webC := e.run("webc", []string{"app=web"}, "sleep 600", "--network", e.nets["c"])
	dbC := e.run("dbc", []string{"app=db"}, "sleep 600 | nc -l -p 9000 > /tmp/recv; sleep 600", "--network", e.nets["c"])
	for _, c := range []string{web, peer, db, webC, dbC} {
		e.endpoint(c)
	}
	// `membrane endpoint get` shows the networks, to debug a refusal.
	if itf := e.endpoint(webC).Interfaces; len(itf) != 1 || itf[0].Network != e.nets["c"] || !itf[0].NoICC {
		t.Errorf("webc's interfaces %s, want one on %s with ICC disabled", dump(itf), e.nets["c"])
	}
	if itf := e.endpoint(db).Interfaces; len(itf) != 1 || itf[0].Network != e.nets["b"] || itf[0].NoICC {
		t.Errorf("db's interfaces %s, want one on %s", dump(itf), e.nets["b"])
	}

	// Control: the same rule, a db on the client's own network.
	e.eventually("web reaches the db on its network through the proxy", 10*time.Second, func() error {
		if s := e.httpStatus(web, e.ip(peer)+":8080", "GET", "/"); s != 200 {
			return fmt.Errorf("GET: status %d", s)
		}
		return nil
	})

	// The reverse: db's ingress rules judge 8081, so the datapath sends the
	// connection to the proxy at db's veth, after Docker forwarded it. On
	// web's network it is proxied as before; across networks Docker drops
	// it before the proxy could see it.
	if s := e.httpStatus(web, e.ip(peer)+":8081", "GET", "/"); s != 200 {
		t.Errorf("web -> peer:8081 (db's ingress rules): status %d, want 200", s)
	}
	if s := e.httpStatus(web, e.ip(db)+":8081", "GET", "/"); s != 0 {
		t.Errorf("web -> db:8081 across networks (db's ingress rules): status %d, want no answer (Docker drops it)", s)
	}
	for _, f := range e.observe(api.ObserveFilter{Type: api.FlowL7}) {
		if f.Dest.Container == db && f.Dest.Port == 8081 {
			t.Errorf("the proxy saw web -> db:8081, which Docker drops: %s", dump(f))
		}
	}
	peerIngress := false
	for _, f := range e.observe(api.ObserveFilter{Type: api.FlowL7, Container: peer}) {
		peerIngress = peerIngress || (f.Dest.Port == 8081 && f.Verdict == "forwarded" && f.Direction == "ingress")
	}
	if !peerIngress {
		t.Errorf("no forwarded l7 record of web -> peer:8081 judged by peer's ingress: %s", dump(e.observe(api.ObserveFilter{Type: api.FlowL7})))
	}

	for _, c := range []struct {
		name           string
		client, server string
		reason         string
	}{
		{"no shared network", web, db, "docker-isolation"},
		{"network without ICC", webC, dbC, "docker-icc-disabled"},
	} {
		out, took := e.isolatedRequest(c.client, e.ip(c.server))
		first, _, _ := strings.Cut(out, "\r\n")
		t.Logf("%s: %s got %q after %v", c.name, c.client, first, took.Round(time.Millisecond))
		if !strings.HasPrefix(out, "HTTP/1.0 403") || !strings.Contains(out, "Docker") || took > 4*time.Second {
			t.Errorf("%s: %s got %q after %v; want a prompt 403 naming Docker's isolation", c.name, c.client, out, took.Round(time.Millisecond))
		}
		time.Sleep(500 * time.Millisecond)
		if n := e.received(c.server); n != 0 {
			t.Errorf("%s: the server received %d bytes through the proxy", c.name, n)
		}
		var rec *api.Flow
		for _, f := range e.observe(api.ObserveFilter{Type: api.FlowL7, Container: c.client}) {
			if f.Reason == c.reason {
				rec = &f
			}
		}
		if rec == nil {
			t.Errorf("%s: no l7 record with reason %s: %s", c.name, c.reason, dump(e.observe(api.ObserveFilter{Type: api.FlowL7})))
			continue
		}
		if rec.Verdict != "denied" || rec.Direction != "egress" || rec.Source.Container != c.client || rec.Dest.Container != c.server ||
			rec.HTTP == nil || rec.HTTP.Status != 403 || !strings.Contains(rec.HTTP.Error, "Docker") {
			t.Errorf("%s: record %s", c.name, dump(rec))
		}
	}
}

// TestLiveTraceReportsDockerIsolation: `membrane policy trace --live`
// says what the proxy will do with an egress http rule between containers
// that Docker keeps apart (decision 32): 403 with the reason, in the JSON
// result and in the text the CLI prints from it. Without http (or with
// db's ingress rules only) Docker drops the connection itself, and the
// trace says so. Containers on a shared network are traced as before, and
// an end named by labels (no particular container) is not judged.
func TestLiveTraceReportsDockerIsolation(t *testing.T) {
	e := newEnv(t, envOpts{networks: map[string][]string{
		"b": nil,
		"c": {"com.docker.network.bridge.enable_icc=false"},
	}})
	e.writePolicy("web.hcl", isolationPolicy)
	e.startDaemon()
	web := e.idle("web", "app=web")
	peer := e.idle("peer", "app=db") // on web's network
	db := e.run("db", []string{"app=db"}, "sleep 600", "--network", e.nets["b"])
	webC := e.run("webc", []string{"app=web"}, "sleep 600", "--network", e.nets["c"])
	dbC := e.run("dbc", []string{"app=db"}, "sleep 600", "--network", e.nets["c"])
	for _, c := range []string{web, peer, db, webC, dbC} {
		e.endpoint(c)
	}
	get := &policies.HTTPRequest{Method: "GET", Path: "/"}
	noShared := (&proxy.IsolatedError{Reason: proxy.ReasonNoSharedNetwork}).Error()
	noICC := (&proxy.IsolatedError{Reason: proxy.ReasonNoICC}).Error()
	for _, c := range []struct {
		name string
		req  api.TraceRequest
		// want: the l7 answer ("" none), its reason, and Docker's
		// isolation (reason, by; "" none).
		http, httpReason, docker, by string
	}{
		{"no shared network", api.TraceRequest{FromContainer: web, ToContainer: db, Port: 9000}, "403", noShared, "docker-isolation", "proxy"},
		{"no shared network, by IP", api.TraceRequest{FromIP: e.ip(web), ToIP: e.ip(db), Port: 8080}, "403", noShared, "docker-isolation", "proxy"},
		{"network without ICC", api.TraceRequest{FromContainer: webC, ToContainer: dbC, Port: 8080}, "403", noICC, "docker-icc-disabled", "proxy"},
		{"no request given", api.TraceRequest{FromContainer: web, ToContainer: db, Port: 9000, HTTPMethod: "-"}, "403", noShared, "docker-isolation", "proxy"},
		{"CONNECT is refused first", api.TraceRequest{FromContainer: web, ToContainer: db, Port: 8080, HTTPMethod: "CONNECT", HTTPPath: "db:8080"}, "403", policies.HTTPConnectRefused, "docker-isolation", "proxy"},
		{"shared network", api.TraceRequest{FromContainer: web, ToContainer: peer, Port: 8080}, "allowed", "", "", ""},
		{"ingress http only: Docker drops it", api.TraceRequest{FromContainer: web, ToContainer: db, Port: 8081}, "allowed", "", "docker-isolation", "docker"},
		{"by labels: not judged", api.TraceRequest{FromLabels: map[string]string{"app": "web"}, ToContainer: db, Port: 9000}, "allowed", "", "", ""},
	} {
		c.req.Proto = "tcp"
		switch c.req.HTTPMethod {
		case "-":
			c.req.HTTPMethod = ""
		case "":
			c.req.HTTPMethod, c.req.HTTPPath = get.Method, get.Path
		}
		tr, err := e.client.Trace(context.Background(), c.req)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		// What the CLI does with --live: read the result, print it.
		var res policies.Result
		if err := json.Unmarshal(tr.Result, &res); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var text strings.Builder
		res.WriteText(&text)
		t.Logf("%s:\n%s", c.name, text.String())
		if res.Verdict != policies.VerdictAllowed {
			t.Errorf("%s: verdict %s, want allowed (the policies allow it): %s", c.name, res.Verdict, tr.Result)
		}
		gotHTTP, gotReason := "", ""
		if res.L7 != nil && res.L7.HTTP != nil {
			gotHTTP, gotReason = res.L7.HTTP.Verdict, res.L7.HTTP.Reason
		}
		if gotHTTP != c.http || gotReason != c.httpReason {
			t.Errorf("%s: l7 answer %q (reason %q), want %q (%q): %s", c.name, gotHTTP, gotReason, c.http, c.httpReason, tr.Result)
		}
		switch {
		case c.docker == "" && res.Docker != nil:
			t.Errorf("%s: docker %s, want none", c.name, dump(res.Docker))
		case c.docker != "" && (res.Docker == nil || res.Docker.Reason != c.docker || res.Docker.By != c.by):
			t.Errorf("%s: docker %s, want reason %s by %s: %s", c.name, dump(res.Docker), c.docker, c.by, tr.Result)
		}
		for _, out := range []string{text.String(), tr.Text} {
			if c.http == "403" && !strings.Contains(out, "403 Forbidden") {
				t.Errorf("%s: the text does not say 403:\n%s", c.name, out)
			}
			if c.docker != "" && !strings.Contains(out, "docker:  "+c.docker+" (") {
				t.Errorf("%s: the text does not give the reason %s:\n%s", c.name, c.docker, out)
			}
			if c.docker == "" && strings.Contains(out, "docker:") {
				t.Errorf("%s: the text speaks of Docker:\n%s", c.name, out)
			}
		}
	}
}
