package policies

import (
	"net"
	"net/netip"
	"net/url"
	"path"
	"strings"
)

// The form of a request that http blocks are matched against. The proxies
// and the evaluator (so `policy trace`) share it, so that a traced request
// is judged as the proxy judges it on the wire.

// HTTPPath is the path http blocks match for a request path: without its
// query, dot segments removed and repeated slashes merged (RFC 3986
// section 5.2.4), a trailing slash kept, "/" when empty. So
// "/public/../admin" is judged as "/admin" and not matched by
// "/public/.*". The path is taken as decoded (the proxies decode the
// target before).
func HTTPPath(p string) string {
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

// HTTPHost is the host http blocks match for a Host field (or authority):
// lower-cased, without its port, so that `host = "api\\.example\\.com"`
// matches "API.example.com:8080". Brackets come off an IPv6 literal only:
// "[api.example.com]" is judged as it is, since a server does not take it
// for api.example.com.
func HTTPHost(h string) string {
	host := h
	if hp, _, err := net.SplitHostPort(h); err == nil {
		host = hp
	} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		host = h[1 : len(h)-1]
	}
	if strings.HasPrefix(h, "[") {
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() {
			return strings.ToLower(h)
		}
	}
	return strings.ToLower(host)
}

// HTTPConnectRefused says why the proxies refuse every CONNECT, whatever
// the rules: they stand in front of one server, and a tunnel would carry
// requests past the rules.
const HTTPConnectRefused = "CONNECT is not proxied"

// asJudged is req in the form http blocks match: the path percent-decoded
// (when it decodes) and normalized, the query dropped, the host as
// HTTPHost has it.
func (req *HTTPRequest) asJudged() *HTTPRequest {
	q := *req
	p, _, _ := strings.Cut(q.Path, "?")
	if strings.IndexByte(p, '%') >= 0 {
		if d, err := url.PathUnescape(p); err == nil {
			p = d
		}
	}
	q.Path = HTTPPath(p)
	q.Host = HTTPHost(q.Host)
	return &q
}
