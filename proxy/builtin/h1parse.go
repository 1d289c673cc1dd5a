package builtin

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"

	"github.com/membrane-fw/membrane/policies"
)

// Parsing of HTTP/1.x message heads and chunked framing (RFC 9112), without
// allocating per message: a head is read into a buffer the connection
// reuses, and its parts are spans (offsets) into that buffer.

// span is a part of a head buffer: buf[s:e].
type span struct{ s, e int }

func (p span) of(buf []byte) []byte { return buf[p.s:p.e] }
func (p span) empty() bool          { return p.s == p.e }

// field is one header field line, name and (trimmed) value.
type field struct{ name, value span }

// fieldOverhead is what each field of a request head counts toward
// Config.MaxHeaderBytes beside its bytes, as HTTP/2 counts a field's
// size (RFC 7541 section 4.1) against SETTINGS_MAX_HEADER_LIST_SIZE: a
// head of short fields ("a:\r\n") would otherwise make its parsed fields
// take eight times the bytes the limit allows.
const fieldOverhead = 32

// httpError is a request the proxy answers itself with status (400, 431,
// 501, ...) and then closes.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(msg string) error { return &httpError{400, msg} }

var (
	errHeadTooLarge = &httpError{431, "request header fields too large"}
	// errLineTooLong is a chunk-size or trailer line beyond maxLineBytes.
	errLineTooLong = errors.New("line too long")
)

// maxLineBytes bounds chunk-size lines (RFC 9112 section 7.1 puts no limit;
// real ones are a few bytes plus extensions).
const maxLineBytes = 4096

// readLine appends one line (up to and including '\n') from br to buf and
// returns the grown buffer and the line's span without its CRLF or LF. The
// whole buf may not exceed limit bytes (errHeadTooLarge). io.EOF before any
// byte is returned as is; a line cut short by EOF is io.ErrUnexpectedEOF.
func readLine(br *bufio.Reader, buf []byte, limit int) ([]byte, span, error) {
	start := len(buf)
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)+len(frag) > limit {
			return buf, span{}, errHeadTooLarge
		}
		buf = append(buf, frag...)
		if err == nil {
			break
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && len(buf) > start {
			err = io.ErrUnexpectedEOF
		}
		return buf, span{}, err
	}
	end := len(buf) - 1 // the '\n'
	if end > start && buf[end-1] == '\r' {
		end--
	}
	return buf, span{start, end}, nil
}

// tokenChar reports the tchar of RFC 9110 section 5.6.2.
var tokenChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenChar[c] {
			return false
		}
	}
	return true
}

// validValue: field-value characters (RFC 9110 section 5.5): visible ASCII,
// SP, HTAB and obs-text; no other control characters (a lone CR is one).
func validValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// parseField splits line (a span of buf) into a header field. Whitespace
// before the colon and obs-fold continuation lines are rejected (RFC 9112
// section 5.1 and 5.2 allow a server to), as is any invalid character.
func parseField(buf []byte, line span) (field, bool) {
	b := line.of(buf)
	colon := -1
	for i, c := range b {
		if c == ':' {
			colon = i
			break
		}
	}
	if colon <= 0 || !isToken(b[:colon]) {
		return field{}, false
	}
	vs, ve := line.s+colon+1, line.e
	for vs < ve && (buf[vs] == ' ' || buf[vs] == '\t') {
		vs++
	}
	for ve > vs && (buf[ve-1] == ' ' || buf[ve-1] == '\t') {
		ve--
	}
	if !validValue(buf[vs:ve]) {
		return field{}, false
	}
	return field{name: span{line.s, line.s + colon}, value: span{vs, ve}}, true
}

// equalFold compares ASCII case-insensitively; want is lower-case.
func equalFold(b []byte, want string) bool {
	if len(b) != len(want) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != want[i] {
			return false
		}
	}
	return true
}

// tokens calls fn with each element of a comma-separated list, trimmed,
// empty elements skipped.
func tokens(b []byte, fn func([]byte)) {
	for len(b) > 0 {
		i := 0
		for i < len(b) && b[i] != ',' {
			i++
		}
		t := b[:i]
		for len(t) > 0 && (t[0] == ' ' || t[0] == '\t') {
			t = t[1:]
		}
		for len(t) > 0 && (t[len(t)-1] == ' ' || t[len(t)-1] == '\t') {
			t = t[:len(t)-1]
		}
		if len(t) > 0 {
			fn(t)
		}
		if i == len(b) {
			return
		}
		b = b[i+1:]
	}
}

// parseContentLength parses a Content-Length value: digits only.
func parseContentLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// parseChunkSize parses a chunk-size line: hex digits, then optional
// whitespace and chunk extensions, which are dropped.
func parseChunkSize(b []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(b); i++ {
		c := b[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			goto rest
		}
		if i >= 15 {
			return 0, false // beyond 2^60: not a real chunk
		}
		n = n<<4 | int64(d)
	}
rest:
	if i == 0 {
		return 0, false
	}
	r := b[i:]
	for len(r) > 0 && (r[0] == ' ' || r[0] == '\t') {
		r = r[1:]
	}
	if len(r) > 0 && r[0] != ';' {
		return 0, false
	}
	if !validValue(r) {
		return 0, false
	}
	return n, true
}

// methodString returns method as a string, the common ones without
// allocating.
func methodString(b []byte) string {
	switch string(b) {
	case "GET":
		return "GET"
	case "POST":
		return "POST"
	case "PUT":
		return "PUT"
	case "HEAD":
		return "HEAD"
	case "DELETE":
		return "DELETE"
	case "OPTIONS":
		return "OPTIONS"
	case "PATCH":
		return "PATCH"
	case "CONNECT":
		return "CONNECT"
	case "TRACE":
		return "TRACE"
	}
	return string(b)
}

// readRequestHead reads a request head from br into head (returned grown)
// and rq. waiting is called before a read of the head that would wait for
// the network (of its request line, when that is not whole in br once its
// first bytes came). preface is true, with nothing parsed, when first
// and the line read is the HTTP/2 connection preface's.
func readRequestHead(br *bufio.Reader, head []byte, rq *request, limit int, first bool, waiting func()) (_ []byte, preface bool, err error) {
	var line span
	// The head's first bytes are here (or on their way): when its request
	// line is not whole in the buffer, the head is arriving in pieces.
	// Peek reads what ReadSlice would read first, no more.
	if b, _ := br.Peek(1); len(b) > 0 {
		if b, _ = br.Peek(br.Buffered()); bytes.IndexByte(b, '\n') < 0 {
			waiting()
		}
	}
	for empty := 0; ; empty++ {
		head = head[:0]
		head, line, err = readLine(br, head, limit)
		if err != nil {
			return head, false, err
		}
		// RFC 9112 section 2.2: ignore empty lines before a request.
		if !line.empty() || empty == 4 {
			break
		}
	}
	if first && string(line.of(head)) == "PRI * HTTP/2.0" {
		return head, true, nil
	}
	*rq = request{fields: rq.fields[:0], connTokens: rq.connTokens[:0], contentLength: -1}
	if err := parseRequestLine(head, line, rq); err != nil {
		return head, false, err
	}
	for {
		if br.Buffered() == 0 {
			waiting()
		}
		// Each field counts fieldOverhead bytes toward the limit too.
		head, line, err = readLine(br, head, limit-fieldOverhead*len(rq.fields))
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return head, false, err
		}
		if line.empty() {
			break
		}
		f, ok := parseField(head, line)
		if !ok {
			return head, false, badRequest("malformed header field")
		}
		if err := rq.classify(head, f); err != nil {
			return head, false, err
		}
		rq.fields = append(rq.fields, f)
	}
	return head, false, rq.validate()
}

func parseRequestLine(buf []byte, line span, rq *request) error {
	b := line.of(buf)
	sp1 := bytes.IndexByte(b, ' ')
	if sp1 <= 0 {
		return badRequest("malformed request line")
	}
	sp2 := bytes.IndexByte(b[sp1+1:], ' ')
	if sp2 <= 0 {
		return badRequest("malformed request line")
	}
	sp2 += sp1 + 1
	rq.method = span{line.s, line.s + sp1}
	rq.target = span{line.s + sp1 + 1, line.s + sp2}
	if !isToken(rq.method.of(buf)) {
		return badRequest("invalid method")
	}
	for _, c := range rq.target.of(buf) {
		if !policies.HTTPTargetByte(c) {
			return badRequest("invalid request target")
		}
	}
	switch string(b[sp2+1:]) {
	case "HTTP/1.1":
		rq.minor = 1
	case "HTTP/1.0":
		rq.minor = 0
	default:
		v := b[sp2+1:]
		if len(v) == 8 && string(v[:5]) == "HTTP/" && v[6] == '.' && v[5] >= '2' && v[5] <= '9' {
			return &httpError{http.StatusHTTPVersionNotSupported, "unsupported HTTP version"}
		}
		if len(v) == 8 && string(v[:7]) == "HTTP/1." && v[7] >= '0' && v[7] <= '9' {
			rq.minor = 1
			break
		}
		return badRequest("malformed HTTP version")
	}
	return nil
}

// classify records what the proxy must know of one request header field.
func (rq *request) classify(buf []byte, f field) error {
	name, val := f.name.of(buf), f.value.of(buf)
	switch len(name) {
	case 4:
		if equalFold(name, "host") {
			rq.host = f.value
			rq.hosts++
		}
	case 6:
		if equalFold(name, "expect") && rq.minor >= 1 {
			if !equalFold(val, "100-continue") {
				return &httpError{http.StatusExpectationFailed, "unsupported Expect"}
			}
			rq.expect100 = true
		}
	case 7:
		if equalFold(name, "upgrade") {
			rq.upgrade = f.value
		}
	case 10:
		if equalFold(name, "connection") {
			tokens(val, func(t []byte) {
				switch {
				case equalFold(t, "close"):
					rq.closeConn = true
				case equalFold(t, "keep-alive"):
					rq.keepAlive = true
				case equalFold(t, "upgrade"):
					rq.connUpgrade = true
				}
				off := f.value.s + (cap(val) - cap(t)) // t's offset within the value
				rq.connTokens = append(rq.connTokens, span{off, off + len(t)})
			})
		}
	case 14:
		if equalFold(name, "content-length") {
			n, ok := parseContentLength(val)
			if !ok {
				return badRequest("invalid Content-Length")
			}
			if rq.contentLength >= 0 && rq.contentLength != n {
				return badRequest("conflicting Content-Length fields")
			}
			rq.contentLength = n
		}
	case 17:
		if equalFold(name, "transfer-encoding") {
			if rq.minor == 0 {
				return badRequest("Transfer-Encoding in an HTTP/1.0 request")
			}
			if rq.chunked || !equalFold(val, "chunked") {
				return &httpError{http.StatusNotImplemented, "unsupported Transfer-Encoding"}
			}
			rq.chunked = true
		}
	}
	return nil
}

func (rq *request) validate() error {
	if rq.chunked && rq.contentLength >= 0 {
		// RFC 9112 section 6.1: the classic request smuggling vector.
		return badRequest("both Transfer-Encoding and Content-Length")
	}
	if rq.hosts > 1 || rq.minor >= 1 && rq.hosts == 0 {
		return badRequest("missing or repeated Host")
	}
	return nil
}

// hopByHop reports the header fields a proxy does not forward (RFC 9110
// section 7.6.1), plus the framing fields it writes itself.
func hopByHop(name []byte) bool {
	switch len(name) {
	case 2:
		return equalFold(name, "te")
	case 6:
		return equalFold(name, "expect")
	case 7:
		return equalFold(name, "upgrade") || equalFold(name, "trailer")
	case 10:
		return equalFold(name, "connection") || equalFold(name, "keep-alive")
	case 14:
		return equalFold(name, "content-length")
	case 16:
		return equalFold(name, "proxy-connection")
	case 17:
		return equalFold(name, "transfer-encoding")
	case 18:
		return equalFold(name, "proxy-authenticate")
	case 19:
		return equalFold(name, "proxy-authorization")
	}
	return false
}

// listed reports whether name is one of the Connection field's tokens.
func listed(buf []byte, toks []span, name []byte) bool {
	for _, t := range toks {
		if bytes.EqualFold(t.of(buf), name) {
			return true
		}
	}
	return false
}
