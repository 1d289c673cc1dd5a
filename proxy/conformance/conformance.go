package conformance

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Target is an engine under test.
type Target struct {
	// Addr is where clients connect (host:port).
	Addr   string
	Engine proxy.Engine
	// Events, when not nil, receives the engine's verdict records.
	Events <-chan proxy.Event
}

// Factory starts an engine that sends every connection to upstream. It
// registers its own cleanup with t.Cleanup.
type Factory func(t *testing.T, upstream netip.AddrPort) Target

// Rule ids of Policy, for assertions.
const (
	RulePublic  = 1 // web: GET|HEAD /public/.*
	RuleUpload  = 2 // web: POST|PUT /upload
	RuleAPI     = 3 // api: host api.example.com, /api/.*, X-Tenant: acme
	RulePresent = 4 // api: /present with X-Token present
	RuleWS      = 5 // ws: GET /ws
	RuleGRPC    = 6 // grpc: POST /grpc.health.v1.Health/Check
	RuleDown    = 7 // web: GET /download/.*
)

func re(s string) *regexp.Regexp { return regexp.MustCompile("^(?:" + s + ")$") }

// HTTPRule is the rule a policy's http block with these attributes
// compiles to; an empty method, path or host is not judged.
func HTTPRule(method, path, host string, headers map[string]string) policies.HTTPRule {
	h := policies.HTTPRule{Headers: headers, MethodSrc: method, PathSrc: path, HostSrc: host}
	if method != "" {
		h.Method = re(method)
	}
	if path != "" {
		h.Path = re(path)
	}
	if host != "" {
		h.Host = re(host)
	}
	return h
}

// Policy is the suite's L7 policy: one ingress check holding the rules above.
func Policy() *proxy.StaticResolver {
	rule := func(id uint32, method, path, host string, headers map[string]string) policies.L7Rule {
		return policies.L7Rule{RuleID: id, HTTP: HTTPRule(method, path, host, headers)}
	}
	return &proxy.StaticResolver{
		Decision: proxy.Decision{
			SrcIdentity: 300, DstIdentity: 400,
			Checks: []proxy.Check{{Direction: policies.Ingress, Rules: policies.L7Set{Rules: []policies.L7Rule{
				rule(RulePublic, "GET|HEAD", "/public/.*", "", nil),
				rule(RuleUpload, "POST|PUT", "/upload", "", nil),
				rule(RuleAPI, "", "/api/.*", `api\.example\.com`, map[string]string{"X-Tenant": "acme"}),
				rule(RulePresent, "", "/present", "", map[string]string{"X-Token": ""}),
				rule(RuleWS, "GET", "/ws", "", nil),
				rule(RuleGRPC, "POST", `/grpc\.health\.v1\.Health/Check`, "", nil),
				rule(RuleDown, "GET", "/download/.*", "", nil),
			}}}},
		},
		Names: map[uint32]string{
			RulePublic: "web", RuleUpload: "web", RuleDown: "web",
			RuleAPI: "api", RulePresent: "api", RuleWS: "ws", RuleGRPC: "grpc",
		},
	}
}

// AllowAll is a resolver without checks: every request passes.
func AllowAll() *proxy.StaticResolver {
	return &proxy.StaticResolver{Decision: proxy.Decision{SrcIdentity: 300, DstIdentity: 400}}
}

// Run runs the suite against the engine f makes.
func Run(t *testing.T, f Factory) {
	up := StartUpstream(t)
	tg := f(t, up)
	if err := tg.Engine.Update(Policy()); err != nil {
		t.Fatalf("Update: %v", err)
	}
	s := &suite{t: t, tg: tg}
	t.Run("AllowedAndDeniedRequests", s.allowedAndDenied)
	t.Run("DotSegmentsAreJudgedNormalized", s.dotSegments)
	t.Run("KeepAliveMixesAllowedAndDenied", s.keepAlive)
	t.Run("Pipelining", s.pipelining)
	t.Run("HalfCloseAfterRequest", s.halfClose)
	t.Run("LargeUpload", s.largeUpload)
	t.Run("UploadWithExpectContinue", s.expectContinue)
	t.Run("RequestTrailersNotForwarded", s.requestTrailers)
	t.Run("LargeDownload", s.largeDownload)
	t.Run("WebSocket", s.webSocket)
	t.Run("H2CStreamsJudgedEach", s.h2c)
	t.Run("GRPCAllowedByPathAndDenied", s.grpc)
	t.Run("BadAndOversizedRequests", s.badRequests)
	t.Run("ConnectIsRefused", s.connectRefused)
	t.Run("AmbiguousTargetsRefused", s.ambiguousTargets)
	t.Run("AmbiguousHostsRefused", s.ambiguousHosts)
	t.Run("UnderscoreAliasesRefused", s.underscoreAliases)
	if tg.Events != nil {
		t.Run("Events", s.events)
	}
	t.Run("Metrics", s.metrics)
	// Last: it changes the policy.
	t.Run("RuleChangeAppliesToKeptAliveConnection", s.ruleChange)
}

type suite struct {
	t  *testing.T
	tg Target
}

func (s *suite) client() *http.Client {
	var p http.Protocols
	p.SetHTTP1(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p, DisableCompression: true}, Timeout: 30 * time.Second}
}

func (s *suite) url(path string) string { return "http://" + s.tg.Addr + path }

type reqCase struct {
	name    string
	method  string
	path    string
	host    string
	headers http.Header
	want    int
	policy  string // a policy name the 403 body must contain
}

func (s *suite) allowedAndDenied(t *testing.T) {
	c := s.client()
	for _, tc := range []reqCase{
		{name: "method allowed", method: "GET", path: "/public/index.html", want: 200},
		{name: "HEAD allowed", method: "HEAD", path: "/public/x", want: 200},
		{name: "method denied", method: "DELETE", path: "/public/index.html", want: 403, policy: "web"},
		{name: "path denied", method: "GET", path: "/private/secret", want: 403},
		{name: "path anchored at end", method: "POST", path: "/upload/more", want: 403},
		{name: "path anchored at start", method: "GET", path: "/x/public/y", want: 403},
		{name: "host and header allowed", method: "GET", path: "/api/v1/items", host: "api.example.com", headers: http.Header{"X-Tenant": {"acme"}}, want: 200},
		{name: "host port ignored", method: "GET", path: "/api/v1/items", host: "api.example.com:8080", headers: http.Header{"X-Tenant": {"acme"}}, want: 200},
		// Go's ServeMux routes hosts case-sensitively: where a rule judges
		// the host, upper case is refused (policies.HTTPHostCase).
		{name: "host in upper case refused", method: "GET", path: "/api/v1/items", host: "API.Example.com:8080", headers: http.Header{"X-Tenant": {"acme"}}, want: 400},
		{name: "host denied", method: "GET", path: "/api/v1/items", host: "evil.example.com", headers: http.Header{"X-Tenant": {"acme"}}, want: 403, policy: "api"},
		// Where a rule judges the host, the hosts servers read before Host
		// (Rack, so Rails) are judged too: every element of every
		// X-Forwarded-Host, and every host= of Forwarded.
		{name: "forwarded host allowed", method: "GET", path: "/api/v1/items", host: "api.example.com", headers: http.Header{"X-Tenant": {"acme"}, "X-Forwarded-Host": {"api.example.com:443"}}, want: 200},
		{name: "forwarded host denied", method: "GET", path: "/api/v1/items", host: "api.example.com", headers: http.Header{"X-Tenant": {"acme"}, "X-Forwarded-Host": {"admin.internal"}}, want: 403, policy: "api"},
		{name: "forwarded host among others denied", method: "GET", path: "/api/v1/items", host: "api.example.com", headers: http.Header{"X-Tenant": {"acme"}, "X-Forwarded-Host": {"api.example.com, admin.internal"}}, want: 403},
		{name: "Forwarded host allowed", method: "GET", path: "/api/v1/items", host: "api.example.com", headers: http.Header{"X-Tenant": {"acme"}, "Forwarded": {`for=192.0.2.1;host="api.example.com:443";proto=https`}}, want: 200},
		{name: "Forwarded host denied", method: "GET", path: "/api/v1/items", host: "api.example.com", headers: http.Header{"X-Tenant": {"acme"}, "Forwarded": {"for=192.0.2.1;host=admin.internal"}}, want: 403},
		{name: "forwarded host, a rule without host", method: "GET", path: "/public/x", headers: http.Header{"X-Forwarded-Host": {"admin.internal"}}, want: 200},
		{name: "host anchored", method: "GET", path: "/api/v1/items", host: "api.example.com.evil.org", headers: http.Header{"X-Tenant": {"acme"}}, want: 403},
		{name: "header value wrong", method: "GET", path: "/api/v1/items", host: "api.example.com", headers: http.Header{"X-Tenant": {"other"}}, want: 403},
		{name: "header repeated with another value", method: "GET", path: "/api/v1/items", host: "api.example.com", headers: http.Header{"X-Tenant": {"evil", "acme"}}, want: 403},
		{name: "header repeated", method: "GET", path: "/api/v1/items", host: "api.example.com", headers: http.Header{"X-Tenant": {"acme", "acme"}}, want: 403},
		{name: "header missing", method: "GET", path: "/api/v1/items", host: "api.example.com", want: 403},
		{name: "header present any value", method: "GET", path: "/present", headers: http.Header{"X-Token": {"whatever"}}, want: 200},
		{name: "header present empty value", method: "PATCH", path: "/present", headers: http.Header{"X-Token": {""}}, want: 200},
		{name: "header absent", method: "GET", path: "/present", want: 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, s.url(tc.path), nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.host != "" {
				req.Host = tc.host
			}
			for k, v := range tc.headers {
				req.Header[k] = v
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", tc.method, tc.path, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("%s %s host=%q: status %d, want %d (body %q)", tc.method, tc.path, tc.host, resp.StatusCode, tc.want, body)
			}
			switch {
			case tc.want == 200 && tc.method != "HEAD":
				if got := string(body); !strings.HasPrefix(got, "upstream "+tc.method+" "+tc.path) {
					t.Errorf("allowed request did not reach the upstream as sent: body %q", got)
				}
			case tc.want == 403:
				if !strings.Contains(string(body), "denied") {
					t.Errorf("403 body %q does not say the request was denied", body)
				}
				if tc.policy != "" && !strings.Contains(string(body), tc.policy) {
					t.Errorf("403 body %q does not name policy %s", body, tc.policy)
				}
				if resp.Header.Get("X-Upstream") != "" {
					t.Errorf("denied request reached the upstream")
				}
			}
		})
	}
}

// Conn is a raw HTTP/1 client connection to an engine, for exchanges
// net/http would not make: requests go out as written, responses are read
// one at a time. The suite and the engines' own tests use it.
type Conn struct {
	T *testing.T
	C net.Conn
	R *bufio.Reader
}

// GetOK sends a GET for path on c, which stays open for more, and reports
// whether the answer is 200; an error within 3 s otherwise (a connection
// the proxy reset, say).
func GetOK(c net.Conn, path string) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}
	return nil
}

// Dial connects to addr with a deadline of d for the whole exchange; the
// connection closes when the test ends.
func Dial(t *testing.T, addr string, d time.Duration) *Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial proxy: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(d))
	return &Conn{T: t, C: c, R: bufio.NewReader(c)}
}

func (s *suite) dialRaw(t *testing.T) *Conn { return Dial(t, s.tg.Addr, 30*time.Second) }

// Send writes s as it is.
func (c *Conn) Send(s string) {
	c.T.Helper()
	if _, err := io.WriteString(c.C, s); err != nil {
		c.T.Fatalf("write: %v", err)
	}
}

// Read reads one response to a request with method, and its whole body.
func (c *Conn) Read(method string) (*http.Response, string) {
	c.T.Helper()
	resp, err := http.ReadResponse(c.R, &http.Request{Method: method})
	if err != nil {
		c.T.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.T.Fatalf("read body: %v", err)
	}
	resp.Body.Close()
	return resp, string(b)
}

func get(path string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: svc\r\n\r\n"
}

func (s *suite) dotSegments(t *testing.T) {
	rc := s.dialRaw(t)
	rc.Send(get("/public/../private/secret"))
	if resp, body := rc.Read("GET"); resp.StatusCode != 403 {
		t.Fatalf("/public/../private/secret: status %d, want 403 (body %q)", resp.StatusCode, body)
	}
	rc.Send(get("/public//./a/../b"))
	resp, body := rc.Read("GET")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "upstream GET /public/b") {
		t.Fatalf("/public//./a/../b: status %d body %q, want 200 forwarded as /public/b", resp.StatusCode, body)
	}
	// Dot segments first, as RFC 3986 (and Envoy) resolve them: ".."
	// takes out the empty segment, so this is /public/b, not /b.
	rc.Send(get("/public//../b"))
	resp, body = rc.Read("GET")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "upstream GET /public/b") {
		t.Fatalf("/public//../b: status %d body %q, want 200 forwarded as /public/b", resp.StatusCode, body)
	}
}

func (s *suite) keepAlive(t *testing.T) {
	rc := s.dialRaw(t)
	seq := []struct {
		path string
		want int
	}{{"/public/1", 200}, {"/denied/1", 403}, {"/public/2", 200}, {"/denied/2", 403}, {"/denied/3", 403}, {"/public/3", 200}}
	for _, st := range seq {
		rc.Send(get(st.path))
		resp, body := rc.Read("GET")
		if resp.StatusCode != st.want {
			t.Fatalf("GET %s on a kept-alive connection: status %d, want %d (%q)", st.path, resp.StatusCode, st.want, body)
		}
		if resp.Close {
			t.Fatalf("GET %s: proxy closed the kept-alive connection", st.path)
		}
	}
}

func (s *suite) pipelining(t *testing.T) {
	rc := s.dialRaw(t)
	paths := []string{"/public/p1", "/denied/p2", "/public/p3", "/public/p4", "/denied/p5"}
	var all strings.Builder
	for _, p := range paths {
		all.WriteString(get(p))
	}
	all.WriteString("POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello")
	rc.Send(all.String())
	for _, p := range paths {
		resp, body := rc.Read("GET")
		want := 200
		if strings.HasPrefix(p, "/denied") {
			want = 403
		}
		if resp.StatusCode != want {
			t.Fatalf("pipelined GET %s: status %d, want %d", p, resp.StatusCode, want)
		}
		if want == 200 && !strings.HasPrefix(body, "upstream GET "+p) {
			t.Fatalf("pipelined GET %s answered out of order: %q", p, body)
		}
	}
	resp, body := rc.Read("POST")
	if resp.StatusCode != 200 || !strings.Contains(body, "n=5 ") {
		t.Fatalf("pipelined POST: status %d body %q", resp.StatusCode, body)
	}
}

// halfClose: a client that shuts down its sending side right after a
// complete request (`printf 'GET / HTTP/1.0\r\n\r\n' | nc host 80`) still
// gets its answer: the request is forwarded (or denied) and the response
// comes back before the proxy closes. A half-close is legal HTTP; it is not
// the client going away.
func (s *suite) halfClose(t *testing.T) {
	for _, tc := range []struct {
		name, req, method string
		want              int
		body              string // prefix (200) or substring (403) of the body
	}{
		{"HTTP/1.0 GET allowed", "GET /public/hc1 HTTP/1.0\r\n\r\n", "GET", 200, "upstream GET /public/hc1"},
		{"HTTP/1.1 GET allowed", "GET /public/hc2 HTTP/1.1\r\nHost: svc\r\n\r\n", "GET", 200, "upstream GET /public/hc2"},
		{"HTTP/1.1 POST with body allowed", "POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello", "POST", 200, "upstream POST /upload"},
		{"HTTP/1.0 GET denied", "GET /private/hc3 HTTP/1.0\r\n\r\n", "GET", 403, "denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := s.dialRaw(t)
			rc.Send(tc.req)
			if err := rc.C.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatalf("shutdown(SHUT_WR): %v", err)
			}
			resp, body := rc.Read(tc.method)
			if resp.StatusCode != tc.want {
				t.Fatalf("after a half-close: status %d, want %d (body %q)", resp.StatusCode, tc.want, body)
			}
			if tc.want == 200 && !strings.HasPrefix(body, tc.body) {
				t.Fatalf("after a half-close: body %q, want the upstream's answer %q...", body, tc.body)
			}
			if tc.want == 403 && (!strings.Contains(body, tc.body) || resp.Header.Get("X-Upstream") != "") {
				t.Fatalf("after a half-close: denied request answered %q (X-Upstream %q)", body, resp.Header.Get("X-Upstream"))
			}
			if tc.method == "POST" && !strings.Contains(body, "n=5 ") {
				t.Fatalf("after a half-close: the upload's body did not reach the upstream whole: %q", body)
			}
			// Then the proxy closes: nothing more comes, and no hang.
			if rest, err := io.ReadAll(rc.R); err != nil || len(rest) != 0 {
				t.Fatalf("after the response: %q, %v; want EOF", rest, err)
			}
			// The record says what happened: forwarded (or denied) with
			// the status the client got, not an error or 499.
			if s.tg.Events == nil {
				return
			}
			path := strings.Fields(tc.req)[1]
			verdict := proxy.VerdictForwarded
			if tc.want == 403 {
				verdict = proxy.VerdictDenied
			}
			timeout := time.After(10 * time.Second)
			for {
				select {
				case ev := <-s.tg.Events:
					if ev.Path != path || ev.Method != tc.method {
						continue // left by an earlier subtest
					}
					if ev.Verdict != verdict || ev.Status != tc.want {
						t.Errorf("event for the half-closed %s %s: verdict %s status %d error %q; want %s %d",
							tc.method, path, ev.Verdict, ev.Status, ev.Error, verdict, tc.want)
					}
					return
				case <-timeout:
					t.Fatalf("no event for the half-closed %s %s", tc.method, path)
				}
			}
		})
	}
}

// pattern is the deterministic content of uploads and downloads.
type pattern struct{ n, off int64 }

func (p *pattern) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if rem := p.n - p.off; int64(len(b)) > rem {
		b = b[:rem]
	}
	for i := range b {
		b[i] = byte((p.off + int64(i)) * 131 >> 3)
	}
	p.off += int64(len(b))
	return len(b), nil
}

func patternSum(n int64) string {
	h := sha256.New()
	io.Copy(h, &pattern{n: n})
	return hex.EncodeToString(h.Sum(nil))
}

const bigSize = 48 << 20

func (s *suite) largeUpload(t *testing.T) {
	// A body without Content-Length goes chunked.
	resp, err := s.client().Post(s.url("/upload"), "application/octet-stream", io.MultiReader(&pattern{n: bigSize}))
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := fmt.Sprintf("n=%d sha=%s", bigSize, patternSum(bigSize))
	if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
		t.Fatalf("chunked upload of %d bytes: status %d body %q, want %q", bigSize, resp.StatusCode, body, want)
	}
	// A denied upload is answered without the body being forwarded.
	resp, err = s.client().Post(s.url("/denied-upload"), "application/octet-stream", &pattern{n: 1 << 20})
	if err != nil {
		t.Fatalf("denied upload: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("denied upload: status %d, want 403", resp.StatusCode)
	}
}

// requestTrailers: the trailer section of a chunked HTTP/1.1 request
// never reaches the upstream (docs/policy.md, decision 79): servers that
// merge it into the header section would read fields no rule judged.
func (s *suite) requestTrailers(t *testing.T) {
	rc := s.dialRaw(t)
	rc.Send("POST /upload HTTP/1.1\r\nHost: svc\r\nTrailer: X-Tenant\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5\r\nhello\r\n0\r\nX-Tenant: evil\r\n\r\n")
	resp, body := rc.Read("POST")
	if resp.StatusCode != 200 || !strings.Contains(body, "n=5 ") {
		t.Fatalf("chunked POST with a trailer: %d %q, want 200 and the body", resp.StatusCode, body)
	}
	if strings.Contains(body, "trailers=") {
		t.Fatalf("the upstream got the request's trailer section: %q", body)
	}
}

func (s *suite) expectContinue(t *testing.T) {
	rc := s.dialRaw(t)
	rc.Send("PUT /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
	resp, err := http.ReadResponse(rc.R, &http.Request{Method: "PUT"})
	if err != nil {
		t.Fatalf("read interim response: %v", err)
	}
	if resp.StatusCode != 100 {
		t.Fatalf("PUT with Expect: 100-continue: first response %d, want 100 Continue", resp.StatusCode)
	}
	rc.Send("hello world")
	// Some engines send more than one 100; skip them.
	for {
		resp, body := rc.Read("PUT")
		if resp.StatusCode == 100 {
			continue
		}
		if resp.StatusCode != 200 || !strings.Contains(body, "n=11 ") {
			t.Fatalf("PUT after 100-continue: status %d body %q", resp.StatusCode, body)
		}
		break
	}
	// Denied: 403 at once, no 100 Continue, and the connection stays usable
	// or is closed cleanly.
	rc2 := s.dialRaw(t)
	rc2.Send("PUT /forbidden HTTP/1.1\r\nHost: svc\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
	resp2, _ := rc2.Read("PUT")
	if resp2.StatusCode != 403 {
		t.Fatalf("denied PUT with Expect: status %d, want 403 without 100 Continue", resp2.StatusCode)
	}
}

func (s *suite) largeDownload(t *testing.T) {
	resp, err := s.client().Get(s.url(fmt.Sprintf("/download/big?n=%d", bigSize)))
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("download: status %d", resp.StatusCode)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		t.Fatalf("download body after %d bytes: %v", n, err)
	}
	if n != bigSize || hex.EncodeToString(h.Sum(nil)) != patternSum(bigSize) {
		t.Fatalf("download: got %d bytes, sum differs or short (want %d)", n, bigSize)
	}
}

const wsUpgrade = "GET %s HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
	"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"

func (s *suite) webSocket(t *testing.T) {
	rc := s.dialRaw(t)
	rc.Send(fmt.Sprintf(wsUpgrade, "/ws"))
	resp, err := http.ReadResponse(rc.R, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatalf("upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("WebSocket upgrade: status %d, want 101", resp.StatusCode)
	}
	// After the upgrade the connection is a byte stream both ways; the
	// upstream echoes. Frames are opaque to the proxy, so plain bytes do.
	for i := 0; i < 3; i++ {
		msg := fmt.Sprintf("frame-%d-%s", i, strings.Repeat("x", i*1000))
		rc.Send(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(rc.R, got); err != nil {
			t.Fatalf("WebSocket echo %d: %v", i, err)
		}
		if string(got) != msg {
			t.Fatalf("WebSocket echo %d: got %q", i, got[:min(len(got), 40)])
		}
	}
	rc2 := s.dialRaw(t)
	rc2.Send(fmt.Sprintf(wsUpgrade, "/ws-admin"))
	if resp, _ := rc2.Read("GET"); resp.StatusCode != 403 {
		t.Fatalf("denied WebSocket upgrade: status %d, want 403", resp.StatusCode)
	}
}

func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 30 * time.Second}
}

func (s *suite) h2c(t *testing.T) {
	c := h2cClient()
	defer c.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 20; i++ {
		for _, p := range []struct {
			path string
			want int
		}{{fmt.Sprintf("/public/h2-%d", i), 200}, {fmt.Sprintf("/secret/h2-%d", i), 403}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := c.Get(s.url(p.path))
				if err != nil {
					errs <- fmt.Errorf("h2c GET %s: %w", p.path, err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.ProtoMajor != 2 {
					errs <- fmt.Errorf("h2c GET %s answered over %s", p.path, resp.Proto)
				}
				if resp.StatusCode != p.want {
					errs <- fmt.Errorf("h2c GET %s: status %d, want %d (%q)", p.path, resp.StatusCode, p.want, body)
				}
				if p.want == 200 && !strings.Contains(string(body), "proto=HTTP/2.0") {
					errs <- fmt.Errorf("h2c GET %s did not reach the upstream over HTTP/2: %q", p.path, body)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func (s *suite) grpc(t *testing.T) {
	cc, err := grpc.NewClient("passthrough:///"+s.tg.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "membrane"})
	if err != nil {
		t.Fatalf("gRPC Check (allowed by path): %v", err)
	}
	if r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC Check: status %v, want SERVING", r.Status)
	}
	_, err = hc.List(ctx, &healthpb.HealthListRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("gRPC List (no rule allows it): %v, want code PermissionDenied", err)
	}
	// The denial did not break the connection: Check still works.
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "membrane"}); err != nil {
		t.Fatalf("gRPC Check after a denied call: %v", err)
	}
}

func (s *suite) badRequests(t *testing.T) {
	rc := s.dialRaw(t)
	// Longer than "PRI * HTTP/2.0": an h2c-capable server peeks that much.
	rc.Send("GARBAGE-THAT-IS-NOT-HTTP\r\n\r\n")
	if resp, _ := rc.Read("GET"); resp.StatusCode != 400 {
		t.Fatalf("malformed request line: status %d, want 400", resp.StatusCode)
	}
	rc2 := s.dialRaw(t)
	rc2.Send("GET /public/x HTTP/1.1\r\nHost: svc\r\nX-Big: " + strings.Repeat("a", 200<<10) + "\r\n\r\n")
	if resp, _ := rc2.Read("GET"); resp.StatusCode != 431 && resp.StatusCode != 400 {
		t.Fatalf("200 KiB header: status %d, want 431 (or 400)", resp.StatusCode)
	}
	rc3 := s.dialRaw(t)
	rc3.Send("POST /upload HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
	if resp, _ := rc3.Read("POST"); resp.StatusCode < 400 {
		t.Fatalf("bad chunk size: status %d, want an error status", resp.StatusCode)
	}
	// The proxy survived all of it.
	resp, err := s.client().Get(s.url("/public/after-bad"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("request after bad ones: %v %v", err, resp)
	}
	resp.Body.Close()
}

// connectRefused: CONNECT is answered 403 whatever the rules, even under
// rules that allow every request and with a server that would accept it
// (the suite's upstream answers anything 200 and goes on reading HTTP): the
// tunnel would carry requests past the rules. Over HTTP/1.1 and HTTP/2.
func (s *suite) connectRefused(t *testing.T) {
	if err := s.tg.Engine.Update(AllowAll()); err != nil {
		t.Fatalf("Update: %v", err)
	}
	defer func() {
		if err := s.tg.Engine.Update(Policy()); err != nil {
			t.Fatalf("Update: %v", err)
		}
	}()
	rc := s.dialRaw(t)
	rc.Send("CONNECT svc:80 HTTP/1.1\r\nHost: svc:80\r\n\r\n")
	resp, body := rc.Read("CONNECT")
	if resp.StatusCode != 403 || resp.Header.Get("X-Upstream") != "" {
		t.Fatalf("HTTP/1.1 CONNECT: status %d (X-Upstream %q), want 403 from the proxy (body %q)", resp.StatusCode, resp.Header.Get("X-Upstream"), body)
	}

	c := h2cClient()
	defer c.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodConnect, s.url(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp2, err := c.Do(req)
	if err != nil {
		t.Fatalf("HTTP/2 CONNECT: %v", err)
	}
	b, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if resp2.ProtoMajor != 2 || resp2.StatusCode != 403 || resp2.Header.Get("X-Upstream") != "" {
		t.Fatalf("HTTP/2 CONNECT: %s status %d (X-Upstream %q), want 403 from the proxy over HTTP/2 (body %q)", resp2.Proto, resp2.StatusCode, resp2.Header.Get("X-Upstream"), b)
	}
}

// ambiguousTargets: targets that servers read as another path than the
// one the rules judge are refused, over HTTP/1.1 and HTTP/2, and reach
// nothing. "/public/..;/private/x" is under /public/ for the rules and
// /private/x for Tomcat; "/public/..%5Cprivate" is /private to a server
// that decodes %5C and reads it as '/'.
func (s *suite) ambiguousTargets(t *testing.T) {
	c := h2cClient()
	defer c.CloseIdleConnections()
	for _, target := range []string{"/public/..;/private/x", "/public/%2e%2e;/private/x", "/public/..%5Cprivate"} {
		rc := s.dialRaw(t)
		rc.Send(get(target))
		if resp, body := rc.Read("GET"); resp.StatusCode < 400 || resp.Header.Get("X-Upstream") != "" {
			t.Errorf("HTTP/1.1 GET %s: status %d (X-Upstream %q) %q, want refused by the proxy", target, resp.StatusCode, resp.Header.Get("X-Upstream"), body)
		}
		req, err := http.NewRequest("GET", s.url("/"), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.URL.Opaque = target // sent as it is
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("HTTP/2 GET %s: %v", target, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode < 400 || resp.Header.Get("X-Upstream") != "" {
			t.Errorf("HTTP/2 GET %s: %s status %d (X-Upstream %q) %q, want refused by the proxy", target, resp.Proto, resp.StatusCode, resp.Header.Get("X-Upstream"), body)
		}
	}
}

// ambiguousHosts: a Host that is not a name or IPv4 address with an
// optional numeric port, or an IPv6 address in brackets, gets 400 over
// HTTP/1.1 and HTTP/2 and reaches nothing, even where no rule looks at the
// host: servers split "evil.com:x.example.com" at the first colon, and a
// pattern over the whole value would judge another host. A bracketed IPv6
// address with a port is served.
func (s *suite) ambiguousHosts(t *testing.T) {
	c := h2cClient()
	defer c.CloseIdleConnections()
	for _, tc := range []struct {
		host string
		want int
	}{
		{"evil.com:x.example.com", 400}, {"api.example.com:80:80", 400}, {"[api.example.com]", 400},
		{"[fd00::1]x", 400}, {"evil.com,api.example.com", 400}, {"[fd00::1]:8080", 200}, {"api.example.com:", 200}, {"my_service", 200},
	} {
		rc := s.dialRaw(t)
		rc.Send("GET /public/x HTTP/1.1\r\nHost: " + tc.host + "\r\n\r\n")
		resp, body := rc.Read("GET")
		if resp.StatusCode != tc.want || (tc.want == 400) != (resp.Header.Get("X-Upstream") == "") {
			t.Errorf("HTTP/1.1 Host %q: status %d (X-Upstream %q) %q, want %d", tc.host, resp.StatusCode, resp.Header.Get("X-Upstream"), body, tc.want)
		}
		req, err := http.NewRequest("GET", s.url("/public/x"), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = tc.host
		resp, err = c.Do(req)
		if err != nil {
			t.Fatalf("HTTP/2 Host %q: %v", tc.host, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != tc.want || (tc.want == 400) != (resp.Header.Get("X-Upstream") == "") {
			t.Errorf("HTTP/2 Host %q: %s status %d (X-Upstream %q) %q, want %d", tc.host, resp.Proto, resp.StatusCode, resp.Header.Get("X-Upstream"), b, tc.want)
		}
	}
}

// underscoreAliases: a field that is one the rules name but for '_' in
// place of '-' (or another separator: '.', '~') gets 400 and does not
// reach the server, beside the named field or alone, over HTTP/1.1 and
// HTTP/2 (CGI reads X_Tenant as X-Tenant, busybox httpd X.Tenant too).
// Other fields with '_' or '.' pass.
func (s *suite) underscoreAliases(t *testing.T) {
	c := h2cClient()
	defer c.CloseIdleConnections()
	for _, tc := range []struct {
		path   string
		fields [][2]string
		want   int
	}{
		{"/api/v1/items", [][2]string{{"X-Tenant", "acme"}, {"X_Tenant", "evil"}}, 400},
		{"/api/v1/items", [][2]string{{"x_tenant", "acme"}}, 400},
		{"/public/x", [][2]string{{"X_Token", "1"}}, 400}, // another rule names X-Token
		// The judged field named in Connection (HTTP/1.1 only) still
		// makes its alias refused.
		{"/public/x", [][2]string{{"Connection", "X-Tenant"}, {"X_Tenant", "1"}}, 400},
		// busybox httpd and lighttpd read every separator as '_'.
		{"/api/v1/items", [][2]string{{"X-Tenant", "acme"}, {"X.Tenant", "evil"}}, 400},
		{"/public/x", [][2]string{{"X~Token", "1"}}, 400},
		{"/api/v1/items", [][2]string{{"X-Tenant", "acme"}, {"X_Other", "1"}}, 200},
		{"/api/v1/items", [][2]string{{"X-Tenant", "acme"}, {"X.Other", "1"}}, 200},
		// A field servers take for a POST's method (Rails, Symfony), where
		// a rule of the connection judges the method.
		{"/public/x", [][2]string{{"X-HTTP-Method-Override", "DELETE"}}, 400},
		{"/public/x", [][2]string{{"x_http_method", "DELETE"}}, 400},
		// A field servers take for the path (IIS URL Rewrite, old
		// Symfony), where a rule of the connection judges the path.
		{"/public/x", [][2]string{{"X-Original-URL", "/admin"}}, 400},
		{"/public/x", [][2]string{{"x_rewrite_url", "/admin"}}, 400},
		{"/public/x", [][2]string{{"X-Original-URI", "/admin"}}, 200},
		{"/public/x", [][2]string{{"X_Tenant_Id", "1"}}, 200},
	} {
		raw := "GET " + tc.path + " HTTP/1.1\r\nHost: api.example.com\r\n"
		for _, f := range tc.fields {
			raw += f[0] + ": " + f[1] + "\r\n"
		}
		rc := s.dialRaw(t)
		rc.Send(raw + "\r\n")
		resp, body := rc.Read("GET")
		if resp.StatusCode != tc.want || (tc.want == 400) != (resp.Header.Get("X-Upstream") == "") {
			t.Errorf("HTTP/1.1 %s %v: status %d (X-Upstream %q) %q, want %d", tc.path, tc.fields, resp.StatusCode, resp.Header.Get("X-Upstream"), body, tc.want)
		}
		if tc.fields[0][0] == "Connection" {
			continue
		}
		req, err := http.NewRequest("GET", s.url(tc.path), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "api.example.com"
		for _, f := range tc.fields {
			req.Header[f[0]] = append(req.Header[f[0]], f[1])
		}
		resp, err = c.Do(req)
		if err != nil {
			t.Fatalf("HTTP/2 %s %v: %v", tc.path, tc.fields, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != tc.want || (tc.want == 400) != (resp.Header.Get("X-Upstream") == "") {
			t.Errorf("HTTP/2 %s %v: %s status %d (X-Upstream %q) %q, want %d", tc.path, tc.fields, resp.Proto, resp.StatusCode, resp.Header.Get("X-Upstream"), b, tc.want)
		}
	}
}

func (s *suite) events(t *testing.T) {
	// Drain what earlier subtests left.
	for len(s.tg.Events) > 0 {
		<-s.tg.Events
	}
	c := s.client()
	for _, p := range []string{"/public/event", "/denied/event"} {
		resp, err := c.Get(s.url(p))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	want := []struct {
		path, verdict, policy string
		status                int
		rule                  uint32
	}{{"/public/event", proxy.VerdictForwarded, "web", 200, RulePublic}, {"/denied/event", proxy.VerdictDenied, "web", 403, 0}}
	for _, w := range want {
		var ev proxy.Event
		select {
		case ev = <-s.tg.Events:
		case <-time.After(10 * time.Second):
			t.Fatalf("no event for %s", w.path)
		}
		if ev.Path != w.path || ev.Verdict != w.verdict || ev.Status != w.status || ev.RuleID != w.rule ||
			!strings.Contains(ev.Policy, w.policy) || ev.Method != "GET" || ev.SrcIdentity != 300 || ev.DstIdentity != 400 ||
			ev.Direction != "ingress" {
			t.Errorf("event %+v; want path %s verdict %s status %d rule %d policy %s identities 300->400, decided by ingress rules",
				ev, w.path, w.verdict, w.status, w.rule, w.policy)
		}
	}
}

func (s *suite) metrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(collectors(s.tg.Engine)); err != nil {
		t.Fatalf("registering the engine's collectors: %v", err)
	}
	// Engines that learn verdicts asynchronously (Envoy's access log) may lag.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("gather: %v", err)
		}
		counts := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != "membrane_proxy_requests_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "verdict" {
						counts[l.GetValue()] += m.GetCounter().GetValue()
					}
				}
			}
		}
		if counts[proxy.VerdictForwarded] > 0 && counts[proxy.VerdictDenied] > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("membrane_proxy_requests_total by verdict = %v after the suite's requests; want forwarded and denied counted", counts)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// collectors bundles an engine's collectors into one.
type collectorSet []prometheus.Collector

func collectors(e proxy.Engine) collectorSet { return collectorSet(e.Collectors()) }

func (c collectorSet) Describe(ch chan<- *prometheus.Desc) {
	for _, x := range c {
		x.Describe(ch)
	}
}

func (c collectorSet) Collect(ch chan<- prometheus.Metric) {
	for _, x := range c {
		x.Collect(ch)
	}
}

func (s *suite) ruleChange(t *testing.T) {
	rc := s.dialRaw(t)
	rc.Send(get("/changes/x"))
	if resp, _ := rc.Read("GET"); resp.StatusCode != 403 {
		t.Fatalf("before the update: status %d, want 403", resp.StatusCode)
	}
	if err := s.tg.Engine.Update(AllowAll()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		rc.Send(get("/changes/x"))
		resp, _ := rc.Read("GET")
		return resp.StatusCode == 200
	})
	if err := s.tg.Engine.Update(Policy()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		rc.Send(get("/changes/x"))
		resp, _ := rc.Read("GET")
		return resp.StatusCode == 403
	})
}

// waitFor retries cond for engines that apply updates asynchronously
// (Envoy, through xDS); the built-in engine passes at the first try.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("the rule change did not reach the kept-alive connection within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StartUpstream starts the suite's upstream on loopback (HTTP/1.1 and h2c)
// and returns its address.
func StartUpstream(t testing.TB) netip.AddrPort {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("membrane", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: upstreamHandler(gs), Protocols: &p, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close(); gs.Stop() })
	return l.Addr().(*net.TCPAddr).AddrPort()
}

func upstreamHandler(gs *grpc.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		w.Header().Set("X-Upstream", "1")
		switch {
		case r.URL.Path == "/upload":
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			fmt.Fprintf(w, "upstream %s %s n=%d sha=%s", r.Method, r.URL.Path, n, hex.EncodeToString(h.Sum(nil)))
			if len(r.Trailer) > 0 {
				// Every trailer field that came (net/http keeps undeclared
				// ones too), for the test that none does.
				fmt.Fprintf(w, " trailers=%v", r.Trailer)
			}
		case strings.HasPrefix(r.URL.Path, "/download/"):
			n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			io.Copy(w, &pattern{n: n})
		case r.URL.Path == "/ws":
			if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
				http.Error(w, "not an upgrade", 400)
				return
			}
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
				"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
			brw.Flush()
			buf := make([]byte, 32<<10)
			for {
				n, err := brw.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		default:
			var b bytes.Buffer
			fmt.Fprintf(&b, "upstream %s %s host=%s proto=%s", r.Method, r.URL.Path, r.Host, r.Proto)
			w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
			w.Write(b.Bytes())
		}
	})
}
