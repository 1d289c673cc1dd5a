package policies

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// The form of a request that http blocks are matched against. The proxies
// and the evaluator (so `policy trace`) share it, so that a traced request
// is judged as the proxy judges it on the wire.

// HTTPPath is the path http blocks match for a request path, as Envoy
// normalizes it: dot segments removed as RFC 3986 section 5.2.4 says (a
// ".." takes out the segment before it, an empty one too, and a final "."
// or ".." leaves a trailing slash), then repeated slashes merged; "/"
// when empty. So "/public/../admin" is judged as "/admin" and not matched
// by "/public/.*", "/public//../admin" as "/public/admin", "/api/v1/.."
// as "/api/". The path is taken as decoded (the proxies decode the target
// before) and without its query.
func HTTPPath(p string) string {
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	if !strings.Contains(p, "/.") && !strings.Contains(p, "//") {
		return p
	}
	segs := strings.Split(p[1:], "/")
	out := segs[:0]
	for i, seg := range segs {
		last := i == len(segs)-1
		switch seg {
		case ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, seg)
			continue
		}
		if last {
			out = append(out, "")
		}
	}
	n := "/" + strings.Join(out, "/")
	for strings.Contains(n, "//") {
		n = strings.ReplaceAll(n, "//", "/")
	}
	return n
}

// HTTPHost is the host http blocks match for a Host field (or authority):
// lower-cased, without its port, so that `host = "api\\.example\\.com"`
// matches "API.example.com:8080". Brackets come off an IPv6 literal only.
// The proxies refuse the hosts HTTPAmbiguousHost names before they judge,
// "[api.example.com]" among them; were one judged, it would be as it is.
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

// HTTPAmbiguousHost says why a Host field (or authority) is refused (400)
// whatever the rules, or "" when it is not. A host is a registered name
// or IPv4 address, or an IPv6 address in brackets, with an optional
// numeric port; anything else servers split differently from the rules:
// "evil.com:x.example.com" is evil.com to Go's ServeMux and to nginx, and
// "[api.example.com]" is no address at all. "" (no host) is not refused.
func HTTPAmbiguousHost(h string) string {
	port := ""
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return "unclosed '[' in the host"
		}
		if a, err := netip.ParseAddr(h[1:end]); err != nil || !a.Is6() || a.Zone() != "" {
			return "brackets around something other than an IPv6 address in the host"
		}
		if rest := h[end+1:]; rest != "" {
			if rest[0] != ':' {
				return "bytes after ']' in the host"
			}
			port = rest[1:]
		}
	} else {
		host := h
		if i := strings.IndexByte(h, ':'); i >= 0 {
			host, port = h[:i], h[i+1:]
		}
		for i := 0; i < len(host); i++ {
			if !regNameByte(host[i]) {
				return fmt.Sprintf("%q in the host", host[i])
			}
		}
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return "a port that is not a number in the host"
		}
	}
	return ""
}

// HTTPHostCase says why a request is refused (400) when a rule that
// judges it looks at the host, or "" when it is not: the host holds
// upper-case letters. Host patterns ignore case (a host name does), but
// not every server routes hosts so: Go's ServeMux sends Host:
// API.example.com past its "api.example.com/" handler to its "/" one, so
// a rule on api\.example\.com would pass a request to another handler
// than the host it judged. Clients send host names in lower case.
func HTTPHostCase[S string | []byte](host S) string {
	for i := 0; i < len(host); i++ {
		if 'A' <= host[i] && host[i] <= 'Z' {
			return "upper-case letters in the host, which servers (Go's ServeMux) route apart from the lower-case host the rules judge"
		}
	}
	return ""
}

// JudgesHost reports whether one of rules looks at the host.
func JudgesHost(rules []L7Rule) bool {
	for i := range rules {
		if rules[i].HTTP.Host != nil {
			return true
		}
	}
	return false
}

// HTTPForwardedHostField is the field in which reverse proxies (nginx,
// Traefik) pass on the Host they received, and which Rack (so Rails'
// request.host) reads before Host by default; Express with "trust proxy",
// Django with USE_X_FORWARDED_HOST and Flask's ProxyFix when configured.
// Forwarded's host= parameter (RFC 7239) serves the same, for Rack and
// Spring among others.
const HTTPForwardedHostField = "X-Forwarded-Host"

// IsHTTPForwardedHost reports whether a field named field names hosts that
// a rule on the host judges too (HTTPForwardedHostsMatch), and which of
// the two kinds: X-Forwarded-Host in any case and any spelling of its
// separators (CGI servers read X_Forwarded_Host as HTTP_X_FORWARDED_HOST),
// or Forwarded in any case.
func IsHTTPForwardedHost[S string | []byte](field S) (xfh, fwd bool) {
	switch len(field) {
	case len(HTTPForwardedHostField):
		return sameField(field, HTTPForwardedHostField), false
	case len("Forwarded"):
		return false, sameField(field, "Forwarded")
	}
	return false, false
}

// HTTPForwardedHostAlias says why a request is refused (400) for carrying
// a field named field when a rule that judges it looks at the host, or ""
// when it is not: the field is X-Forwarded-Host spelled with a separator
// other than '-' and '_' (X.Forwarded.Host), which busybox httpd and
// lighttpd give CGI programs as HTTP_X_FORWARDED_HOST (HTTPFieldAlias).
// The '-' and '_' spellings are judged (HTTPForwardedHostsMatch); these
// are refused, as Envoy cannot judge them (a route per spelling refuses
// them there). Clients and proxies send none of them.
func HTTPForwardedHostAlias[S string | []byte](field S) string {
	if xfh, _ := IsHTTPForwardedHost(field); !xfh {
		return ""
	}
	for i := 0; i < len(field); i++ {
		if c := field[i]; HTTPNameSeparator(c) && c != '-' && c != '_' {
			return fmt.Sprintf("header %q is %q to CGI servers, which read every character but letters and digits as '_'", string(field), HTTPForwardedHostField)
		}
	}
	return ""
}

// HTTPForwardedHostsMatch reports whether every host that a request names
// in its X-Forwarded-Host values xfh and Forwarded values fwd (every
// occurrence of the fields) matches host, the pattern of a rule that
// judges the host; true when there are none. Servers take these for the
// host the client asked for (HTTPForwardedHostField), so a rule on
// api\.example\.com must not pass "X-Forwarded-Host: admin.internal"
// along with "Host: api.example.com"; a reverse proxy that forwards the
// host it received passes.
//
// X-Forwarded-Host is a comma-separated list (servers take the first,
// Express, or the last, Rack): every element is judged. In Forwarded,
// every "host" followed by '=' (any case, blanks before '=') starts a
// value up to the next ',' or ';', with blanks and one quote on either
// side taken off; it is judged wherever it stands, inside a quoted
// string or another parameter's name too, as Spring's parser finds it
// anywhere, and Rack's splits at every ',' and ';'. A host is judged as
// Host is (HTTPHost, without port and brackets) and must be one that
// HTTPAmbiguousHost and HTTPHostCase let through: no upper-case letters.
func HTTPForwardedHostsMatch(host *regexp.Regexp, xfh, fwd []string) bool {
	for _, v := range xfh {
		for e := range strings.SplitSeq(v, ",") {
			if !forwardedHostMatches(host, e) {
				return false
			}
		}
	}
	for _, v := range fwd {
		for v != "" {
			i := indexFold(v, "host")
			if i < 0 {
				break
			}
			v = v[i+len("host"):]
			rest := strings.TrimLeft(v, " \t")
			if rest == "" || rest[0] != '=' {
				continue
			}
			e := rest[1:]
			if end := strings.IndexAny(e, ",;"); end >= 0 {
				e = e[:end]
			}
			e = strings.Trim(e, " \t")
			e = strings.TrimPrefix(e, `"`)
			e = strings.TrimSuffix(e, `"`)
			if !forwardedHostMatches(host, e) {
				return false
			}
		}
	}
	return true
}

// forwardedHostMatches reports whether one forwarded host e, blanks
// around it, matches host.
func forwardedHostMatches(host *regexp.Regexp, e string) bool {
	e = strings.Trim(e, " \t")
	if HTTPAmbiguousHost(e) != "" || HTTPHostCase(e) != "" {
		return false
	}
	return host.MatchString(HTTPHost(e))
}

// indexFold is the index of the first occurrence of lower, a lower-case
// ASCII word, in s in any case; -1 when there is none.
func indexFold(s, lower string) int {
	for i := 0; i+len(lower) <= len(s); i++ {
		j := 0
		for ; j < len(lower); j++ {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != lower[j] {
				break
			}
		}
		if j == len(lower) {
			return i
		}
	}
	return -1
}

// HTTPMethodOverrides are the fields servers take for a POST's method:
// Rails (Rack::MethodOverride), Symfony and Laravel, ASP.NET Core's
// UseHttpMethodOverride and Express's method-override read
// X-HTTP-Method-Override; OData and Google's APIs X-HTTP-Method and
// X-Method-Override.
var HTTPMethodOverrides = []string{"X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"}

// HTTPMethodOverride says why a request is refused (400) for carrying a
// field named field when a rule that judges it looks at the method, or ""
// when it is not: the field is one servers take for the method
// (HTTPMethodOverrides), in any spelling of its separators
// (HTTPFieldAlias). With method = "GET|POST", a POST carrying
// X-HTTP-Method-Override: DELETE would be a DELETE to a Rails or Laravel
// application. Clients send it to tunnel a method through proxies that
// refuse it, which a rule on the method means to refuse.
func HTTPMethodOverride[S string | []byte](field S) string {
	for _, o := range HTTPMethodOverrides {
		if sameField(field, o) {
			return fmt.Sprintf("header %q sets the method to servers (Rails, Symfony, ASP.NET Core), which a rule judges", o)
		}
	}
	return ""
}

// JudgesMethod reports whether one of rules looks at the method.
func JudgesMethod(rules []L7Rule) bool {
	for i := range rules {
		if rules[i].HTTP.Method != nil {
			return true
		}
	}
	return false
}

// HTTPPathOverrides are the fields servers take for the request's path:
// IIS's URL Rewrite module sets X-Original-URL when it rewrites a request
// and ISAPI_Rewrite X-Rewrite-URL, and Symfony before the CVE-2018-14773
// fix, Zend Framework before the same fix (version 1, so Magento 1, for
// good) and other PHP code written for IIS route by them, taken from the
// request, before the request line.
var HTTPPathOverrides = []string{"X-Original-URL", "X-Rewrite-URL"}

// HTTPPathOverride says why a request is refused (400) for carrying a
// field named field when a rule that judges it looks at the path, or ""
// when it is not: the field is one servers take for the path
// (HTTPPathOverrides), in any spelling of its separators
// (HTTPFieldAlias), as HTTPMethodOverride does for the method. With
// path = "/public/.*", GET /public/x carrying X-Original-URL: /admin would
// be a request for /admin to such a server. Clients do not send them;
// rewriting servers set them for the application behind them.
func HTTPPathOverride[S string | []byte](field S) string {
	for _, o := range HTTPPathOverrides {
		if sameField(field, o) {
			return fmt.Sprintf("header %q sets the path to servers (Symfony, Zend Framework), which a rule judges", o)
		}
	}
	return ""
}

// JudgesPath reports whether one of rules looks at the path.
func JudgesPath(rules []L7Rule) bool {
	for i := range rules {
		if rules[i].HTTP.Path != nil {
			return true
		}
	}
	return false
}

// regNameByte: a byte of a host name: the unreserved bytes of RFC 3986.
// Its registered names also allow sub-delimiters and percent-encoding,
// which no host name holds and which servers would read differently: a
// repeated Host joined with ',' ("evil.com,api.example.com"), say.
func regNameByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
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

// MaxHeaderNameSeparators bounds the separators (HTTPNameSeparator) in a
// header name a rule names: the Envoy engine refuses other spellings of it
// (HTTPFieldAlias) by a route of its own each.
const MaxHeaderNameSeparators = 8

// HTTPNameSeparator reports whether c, a byte of a field name, is one that
// CGI servers turn to '_' in the field's variable: anything but an ASCII
// letter or digit. Of the token characters, these are !#$%&'*+-.^_`|~.
func HTTPNameSeparator(c byte) bool {
	return !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9')
}

// HTTPFieldAlias says why a request is refused (400) for carrying a field
// named field when a rule judging the request names the field judged, or
// "" when it is not: the two names are the same but for their separators
// (HTTPNameSeparator), which differ. CGI gives X_Tenant and X-Tenant one
// variable, HTTP_X_TENANT, and so do PHP and the WSGI and Rack servers
// that follow it; busybox httpd and lighttpd turn every separator to '_'
// (X.Tenant, X~Tenant and X+Tenant are HTTP_X_TENANT too), and PHP turns
// '.' to '_' in its variable names. So such a field could carry a value
// to the server past a rule on the other. Clients do not send two
// spellings of one field.
func HTTPFieldAlias(field, judged string) string {
	if !IsHTTPFieldAlias(field, judged) {
		return ""
	}
	return fmt.Sprintf("header %q is %q to CGI servers, which read every character but letters and digits as '_'", field, judged)
}

// IsHTTPFieldAlias reports whether HTTPFieldAlias refuses field against
// judged, without allocating (the proxy's per-request check).
func IsHTTPFieldAlias[S string | []byte](field S, judged string) bool {
	if len(field) != len(judged) {
		return false
	}
	same := true
	for i := 0; i < len(judged); i++ {
		a, b := field[i], judged[i]
		if a == b {
			continue
		}
		if aliasFold(a) != aliasFold(b) {
			return false
		}
		if HTTPNameSeparator(a) {
			same = false // a separator differs: another spelling
		}
	}
	return !same
}

// sameField reports whether field is name in any case and any spelling
// of its separators.
func sameField[S string | []byte](field S, name string) bool {
	if len(field) != len(name) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if aliasFold(field[i]) != aliasFold(name[i]) {
			return false
		}
	}
	return true
}

// aliasFold folds c as HTTPFieldAlias compares names: case ignored, and
// every separator is '_'.
func aliasFold(c byte) byte {
	switch {
	case HTTPNameSeparator(c):
		return '_'
	case 'A' <= c && c <= 'Z':
		return c + 'a' - 'A'
	}
	return c
}

// httpFieldAliases is the first of req's fields that HTTPFieldAlias
// refuses against the header names of rules, as its reason; "" for none.
func httpFieldAliases(req *HTTPRequest, rules []L7Rule) string {
	for _, r := range rules {
		for _, judged := range slices.Sorted(maps.Keys(r.HTTP.Headers)) {
			for _, field := range slices.Sorted(maps.Keys(req.Headers)) {
				if why := HTTPFieldAlias(field, judged); why != "" {
					return why
				}
			}
		}
	}
	return ""
}

// HTTPAsteriskTarget says why a "*" target is refused (400): it names no
// resource, and HTTP allows it for OPTIONS only, which is judged as the
// path "/*". "" for any other target.
func HTTPAsteriskTarget(method, target string) string {
	if target == "*" && method != "OPTIONS" {
		return "'*' is a target for OPTIONS only"
	}
	return ""
}

// HTTPTargetByte reports whether c may stand in a request target as sent:
// visible ASCII, what RFC 3986 and RFC 9112 allow (clients percent-encode
// the rest). A space or control character would end the request line for
// one parser and not for another, and a byte above 0x7E is read as Latin-1
// by some servers, as UTF-8 by others, and as '.' or '/' by those that
// decode overlong UTF-8 ("\xc0\xae"); Envoy's HTTP/1 parser refuses them
// too. The built-in engine refuses such a target (400) whatever the rules,
// over HTTP/1.1 and HTTP/2, and so does policy trace.
func HTTPTargetByte(c byte) bool { return '!' <= c && c <= '~' }

// HTTPConnectRefused says why the proxies refuse every CONNECT, whatever
// the rules: they stand in front of one server, and a tunnel would carry
// requests past the rules.
const HTTPConnectRefused = "CONNECT is not proxied"

// onWire is req as the proxies read it off the wire, or why they refuse
// it (400) whatever the rules: a method that is no token, a target that is
// neither an origin-form path, '*' nor an absolute http(s) URI, or holds
// a byte that is not visible ASCII (HTTPTargetByte), a
// field whose name is no token or whose value holds a line break or NUL.
// An absolute-form target's authority stands for Host, as in the
// proxies, and its path and query are the target judged.
func (req *HTTPRequest) onWire() (HTTPRequest, string) {
	q := *req
	// Blanks around Host's value are not part of it, as around any
	// field's (below).
	q.Host = strings.Trim(q.Host, " \t")
	if !validHeaderName(q.Method) {
		return q, fmt.Sprintf("invalid method: %q is not a token", q.Method)
	}
	for i := 0; i < len(q.Path); i++ {
		if !HTTPTargetByte(q.Path[i]) {
			return q, fmt.Sprintf("invalid request target: byte 0x%02X is not visible ASCII (clients send it percent-encoded, as %%%02X)", q.Path[i], q.Path[i])
		}
	}
	lower := strings.ToLower(q.Path)
	switch {
	case q.Path == "*", strings.HasPrefix(q.Path, "/"):
	case strings.HasPrefix(lower, "http://") || strings.HasPrefix(lower, "https://"):
		u, err := url.ParseRequestURI(q.Path)
		if err != nil || u.Host == "" {
			return q, "invalid request target"
		}
		if why := HTTPAmbiguousTarget(q.Path, u.Path); why != "" {
			return q, why
		}
		q.Host = u.Host
		q.Path = u.EscapedPath()
		if q.Path == "" {
			q.Path = "/"
		}
		if u.RawQuery != "" {
			q.Path += "?" + u.RawQuery
		}
	default:
		return q, "invalid request target"
	}
	// Blanks around a field value are not part of it (RFC 9110, section
	// 5.5): the proxies read "X-Tenant:  acme " as acme.
	headers := make(map[string]string, len(q.Headers))
	for _, name := range slices.Sorted(maps.Keys(q.Headers)) {
		v := q.Headers[name]
		if IsHTTPEnvoyDropped(name) {
			continue // the proxies drop it before their rules (decision 82)
		}
		switch {
		case !validHeaderName(name):
			return q, fmt.Sprintf("malformed header field: the name %q is not a token", name)
		case strings.ContainsAny(v, "\r\n\x00"):
			return q, fmt.Sprintf("malformed header field: the value of %s holds a line break or NUL", name)
		}
		headers[name] = strings.Trim(v, " \t")
	}
	if q.Headers != nil {
		q.Headers = headers
	}
	return q, ""
}

// asJudged is req in the form http blocks match: the path percent-decoded
// and normalized, the query dropped, the host as HTTPHost has it. A
// request the proxies refuse whatever the rules gets the reason instead.
func (req *HTTPRequest) asJudged() (*HTTPRequest, string) {
	q, why := req.onWire()
	if why != "" {
		return nil, why
	}
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
	if why := HTTPAsteriskTarget(q.Method, q.Path); why != "" {
		return nil, why
	}
	if why := HTTPAmbiguousHost(q.Host); why != "" {
		return nil, why
	}
	q.Path = HTTPPath(p)
	q.Host = HTTPHost(q.Host)
	return &q, ""
}

// HTTPEnvoyDropped are the x-envoy- fields that Envoy's connection
// manager takes out of every request from a client it does not trust
// (without use_remote_address, every client: its cleanInternalHeaders and
// the x-envoy-internal it always removes), before its filters, so its
// rules, see the request: instructions to Envoy (retries, timeouts,
// tracing) and marks of an internal request. Both engines drop them from
// what clients send and do not forward them, so a header rule that names
// one never matches (the loader warns at it).
var HTTPEnvoyDropped = []string{
	"x-envoy-internal",
	"x-envoy-retriable-status-codes", "x-envoy-retriable-header-names",
	"x-envoy-retry-on", "x-envoy-retry-grpc-on", "x-envoy-max-retries",
	"x-envoy-upstream-alt-stat-name",
	"x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
	"x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms",
	"x-envoy-force-trace", "x-envoy-ip-tags", "x-envoy-original-url",
	"x-envoy-hedge-on-per-try-timeout",
}

// IsHTTPEnvoyDropped reports whether a request field named name, in any
// case, is one of HTTPEnvoyDropped.
func IsHTTPEnvoyDropped[S string | []byte](name S) bool {
	const prefix = "x-envoy-"
	if len(name) <= len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		if lowerASCII(name[i]) != prefix[i] {
			return false
		}
	}
next:
	for _, d := range HTTPEnvoyDropped {
		if len(d) != len(name) {
			continue
		}
		for i := len(prefix); i < len(d); i++ {
			if lowerASCII(name[i]) != d[i] {
				continue next
			}
		}
		return true
	}
	return false
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
