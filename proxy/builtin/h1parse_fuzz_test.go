package builtin

import (
	"bufio"
	"bytes"
	"net/http"
	"strconv"
	"testing"
)

// FuzzRequestHead feeds arbitrary bytes to the HTTP/1 loop's head parser.
// It must not panic, its spans must stay inside the head, and whenever
// both it and net/http accept a head they must agree on the method, the
// target and the body's framing: a disagreement there is how requests get
// smuggled past a proxy.
func FuzzRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"GET /x HTTP/1.0\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\n\r\n",
		"GET /x HTTP/1.1\nHost: a\n\n",
		"GET /x HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
		"\r\nGET /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var rq request
		head, preface, err := readRequestHead(bufio.NewReader(bytes.NewReader(data)), nil, &rq, 8<<10, true, func() {})
		if preface || err != nil {
			return
		}
		in := func(p span) []byte {
			if p.s < 0 || p.e < p.s || p.e > len(head) {
				t.Fatalf("span %v outside the head (%d bytes)", p, len(head))
			}
			return p.of(head)
		}
		method, target := in(rq.method), in(rq.target)
		for _, fl := range rq.fields {
			in(fl.name)
			in(fl.value)
		}
		for _, tk := range rq.connTokens {
			in(tk)
		}
		if rq.chunked && rq.contentLength >= 0 {
			t.Fatal("accepted both chunked and Content-Length")
		}
		// The same bytes, without the empty lines the parser skipped
		// (net/http does not), to net/http.
		i := 0
		for i < len(data) && (data[i] == '\r' || data[i] == '\n') {
			i++
		}
		req, gerr := http.ReadRequest(bufio.NewReader(bytes.NewReader(data[i:])))
		if gerr != nil {
			return // stricter than this parser (on Host, say), which is fine
		}
		if req.Method != string(method) || req.RequestURI != string(target) {
			t.Fatalf("request line: ours %q %q, net/http %q %q", method, target, req.Method, req.RequestURI)
		}
		goChunked := len(req.TransferEncoding) > 0 && req.TransferEncoding[0] == "chunked"
		if goChunked != rq.chunked {
			t.Fatalf("chunked: ours %v, net/http %v (%q)", rq.chunked, goChunked, req.TransferEncoding)
		}
		if !rq.chunked {
			cl := rq.contentLength
			if cl < 0 {
				cl = 0
			}
			if req.ContentLength != cl {
				t.Fatalf("Content-Length: ours %d, net/http %d", cl, req.ContentLength)
			}
		}
		if got := req.Header.Get("Content-Length"); got != "" && !rq.chunked {
			if n, err := strconv.ParseInt(got, 10, 64); err != nil || n != rq.contentLength {
				t.Fatalf("Content-Length field %q, ours %d", got, rq.contentLength)
			}
		}
	})
}
