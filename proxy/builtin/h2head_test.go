package builtin

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/membrane-fw/membrane/proxy/conformance"
)

// TestH2SlowHeaderBlockIsCutAtTheHeaderTimeout: an HTTP/2 header block
// (HEADERS up to the frame with END_HEADERS) must arrive whole within the
// header timeout, as an HTTP/1 request head must: a block trickled in
// CONTINUATION frames, and a HEADERS frame sent in part, end the
// connection, even while another stream of it is open (which stops
// net/http's idle timer, so that nothing else bounded them), and what
// the connection held goes: its held stream ends upstream and its slots
// come back. A frame header sent in part is cut too.
func TestH2SlowHeaderBlockIsCutAtTheHeaderTimeout(t *testing.T) {
	var held, slow atomic.Int32
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/public/hold":
			held.Add(1)
			defer held.Add(-1)
			<-r.Context().Done()
		case "/public/slow":
			slow.Add(1)
		}
	}))
	e, addr := engineOn(t, up, Config{
		Dial: unmarked, Resolver: conformance.AllowAll(),
		IdleTimeout: time.Minute, StreamIdleTimeout: time.Minute, headerTimeout: 300 * time.Millisecond,
	})
	slowBlock := func() []byte {
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/public/slow"}, {":authority", "svc"}, {"x-slow", strings.Repeat("a", 1000)}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return hb.Bytes()
	}()
	// The whole HEADERS frame of stream 3, to send in part.
	var frame bytes.Buffer
	http2.NewFramer(&frame, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: slowBlock, EndStream: true, EndHeaders: true})

	for _, tc := range []struct {
		name string
		send func(f *h2Flooder, stop <-chan struct{})
	}{
		{"CONTINUATION frames trickled", func(f *h2Flooder, stop <-chan struct{}) {
			if f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: slowBlock[:10], EndStream: true}) != nil {
				return
			}
			for i := 10; i < len(slowBlock); i++ {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if f.fr.WriteContinuation(3, i == len(slowBlock)-1, slowBlock[i:i+1]) != nil {
					return
				}
			}
		}},
		{"HEADERS frame in part", func(f *h2Flooder, stop <-chan struct{}) {
			f.c.Write(frame.Bytes()[:9+100])
		}},
		{"frame header in part", func(f *h2Flooder, stop <-chan struct{}) {
			f.c.Write(frame.Bytes()[:4])
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := dialH2Flooder(t, addr)
			done := make(chan struct{})
			go func() { f.drain(); close(done) }()
			if err := f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2Block("/public/hold"), EndHeaders: true, EndStream: true}); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the held stream reaches the upstream", func() error {
				if n := held.Load(); n != 1 {
					return fmt.Errorf("%d requests held upstream", n)
				}
				return nil
			})
			stop := make(chan struct{})
			defer close(stop)
			go tc.send(f, stop)
			select {
			case <-done:
			case <-time.After(10 * time.Second): // the header timeout is 300 ms
				t.Fatalf("the connection is still open after 10 s of a header block that does not end")
			}
			eventually(t, "the connection's held stream and slots are let go", func() error {
				if n := held.Load(); n != 0 {
					return fmt.Errorf("%d requests still held upstream", n)
				}
				e.limit.mu.Lock()
				defer e.limit.mu.Unlock()
				if e.limit.total != 0 {
					return fmt.Errorf("%d slots taken", e.limit.total)
				}
				return nil
			})
			if n := slow.Load(); n != 0 {
				t.Fatalf("the slow header block reached the upstream %d times", n)
			}
		})
	}
}

// TestH2HeaderBlockInPiecesInTimeIsServed: a header block that comes in
// pieces but whole within the header timeout is served, and the
// connection stays usable after the timeout has passed: the timeout
// bounds a header block, not the connection.
func TestH2HeaderBlockInPiecesInTimeIsServed(t *testing.T) {
	const timeout = time.Second
	_, addr := engineOn(t, startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ok")
	})), Config{Dial: unmarked, Resolver: conformance.AllowAll(), IdleTimeout: time.Minute, headerTimeout: timeout})
	f := dialH2Flooder(t, addr)
	status := func(id uint32) string {
		t.Helper()
		for {
			fr, err := f.fr.ReadFrame()
			if err != nil {
				t.Fatalf("stream %d: %v", id, err)
			}
			if h, ok := fr.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
				return h.PseudoValue("status")
			}
		}
	}
	block := h2Block("/public/pieces")
	if err := f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:5], EndStream: true}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(timeout / 10)
	if err := f.fr.WriteContinuation(1, true, block[5:]); err != nil {
		t.Fatal(err)
	}
	if s := status(1); s != "200" {
		t.Fatalf("stream 1: status %s, want 200", s)
	}
	time.Sleep(timeout * 3 / 2)
	if err := f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block, EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	if s := status(3); s != "200" {
		t.Fatalf("stream 3, after the header timeout passed: status %s, want 200", s)
	}
}

// TestH2SlowPrefaceIsCutAtTheHeaderTimeout: the HTTP/2 connection
// preface, trickled, must arrive within the header timeout: its first
// line is read as an HTTP/1 request line, the rest by net/http's HTTP/2
// server, whose ReadHeaderTimeout is the engine's header timeout.
func TestH2SlowPrefaceIsCutAtTheHeaderTimeout(t *testing.T) {
	_, addr := engineOn(t, conformance.StartUpstream(t), Config{Dial: unmarked, IdleTimeout: time.Minute, headerTimeout: 300 * time.Millisecond})
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "PRI * HTTP/2.0\r\n"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for _, b := range []byte("\r\nSM\r\n\r") { // not the last byte
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			if _, err := c.Write([]byte{b}); err != nil {
				return
			}
		}
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second)) // the header timeout is 300 ms
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("the connection is still open after 20 s of a preface that does not end: %v", err)
	}
}
