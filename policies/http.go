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
			return strings.ToLower("[" + host + "]")
		}
	}
	return strings.ToLower(host)
}

// HTTPAmbiguousTarget says why a request target is refused (400) whatever
// the rules, or "" when it is not: servers would read it as another path
// than the one the rules judge. target is the target as sent, path its
// path percent-decoded.
//   - '#': a fragment has no place in a request; WHATWG URL parsers
//     (Node's) cut the path there.
//   - '\', raw or encoded: WHATWG parsers take it for '/', and servers that
//     decode %5C (IIS) too, so "/public/..\admin" would reach "/admin".
//   - a dot segment with parameters ("/..;x/"): Tomcat and the servers
//     that follow it drop the parameters, then the segment, so
//     "/public/..;/admin" would reach "/admin".
//
// Clients percent-encode '#' and '\', and send no such segments.
func HTTPAmbiguousTarget(target, path string) string {
	if strings.IndexByte(target, '#') >= 0 {
		return "'#' in the request target"
	}
	if strings.IndexByte(path, '\\') >= 0 {
		return "'\\' in the path"
	}
	for seg := range strings.SplitSeq(path, "/") {
		if i := strings.IndexByte(seg, ';'); i >= 0 && (seg[:i] == "." || seg[:i] == "..") {
			return "dot segment with parameters in the path"
		}
	}
	return ""
}

// HTTPConnectRefused says why the proxies refuse every CONNECT, whatever
// the rules: they stand in front of one server, and a tunnel would carry
// requests past the rules.
const HTTPConnectRefused = "CONNECT is not proxied"

// asJudged is req in the form http blocks match: the path percent-decoded
// and normalized, the query dropped, the host as HTTPHost has it. A
// request the proxies refuse whatever the rules gets the reason instead.
func (req *HTTPRequest) asJudged() (*HTTPRequest, string) {
	q := *req
	p, _, _ := strings.Cut(q.Path, "?")
	if strings.IndexByte(p, '%') >= 0 {
		d, err := url.PathUnescape(p)
		if err != nil {
			return nil, "invalid percent-encoding in the path"
		}
		p = d
	}
	if why := HTTPAmbiguousTarget(q.Path, p); why != "" {
		return nil, why
	}
	q.Path = HTTPPath(p)
	q.Host = HTTPHost(q.Host)
	return &q, ""
}
