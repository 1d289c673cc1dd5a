package builtin

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/membrane-fw/membrane/proxy/conformance"
)

// HTTP/2 floods against the engine: what a client does on its own
// connection must not take what other clients need, and must leave
// nothing behind when it ends.

// h2Flooder is a raw HTTP/2 client connection to the engine.
type h2Flooder struct {
	c  net.Conn
	fr *http2.Framer
}

func dialH2Flooder(t *testing.T, addr string) *h2Flooder {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return &h2Flooder{c, fr}
}

// block is the HPACK block of a GET of path.
func h2Block(path string) []byte {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", path}, {":authority", "svc"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return hb.Bytes()
}

// drain reads frames until the connection ends and returns the GOAWAY it
// got, if any. It writes nothing (the test's goroutine is the framer's one
// writer), so the engine's SETTINGS go unacknowledged, which it allows.
func (f *h2Flooder) drain() *http2.GoAwayFrame {
	var ga *http2.GoAwayFrame
	for {
		fr, err := f.fr.ReadFrame()
		if err != nil {
			return ga
		}
		if fr, ok := fr.(*http2.GoAwayFrame); ok {
			ga = fr
		}
	}
}

// TestH2RapidResetLeavesNoSlots: a client that opens streams and resets
// them at once (CVE-2023-44487), many times over, to an upstream that
// holds every request, leaves no slot of the connection limits taken
// and no request held upstream once it is gone, and the source's next
// client is served.
func TestH2RapidResetLeavesNoSlots(t *testing.T) {
	var inFlight atomic.Int32
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inFlight.Add(1)
		defer inFlight.Add(-1)
		if r.URL.Path == "/public/hold" {
			<-r.Context().Done()
			return
		}
		fmt.Fprint(w, "ok")
	}))
	e, addr := engineOn(t, up, Config{MaxConnectionsPerSource: 8, Dial: unmarked, Resolver: conformance.AllowAll()})
	slots := func() int {
		e.limit.mu.Lock()
		defer e.limit.mu.Unlock()
		return e.limit.total
	}
	f := dialH2Flooder(t, addr)
	block := h2Block("/public/hold")
	done := make(chan *http2.GoAwayFrame, 1)
	go func() { done <- f.drain() }()
	for i := uint32(0); i < 2000; i++ {
		id := 1 + 2*i
		if f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true, EndStream: true}) != nil ||
			f.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
			break // the engine closed the connection
		}
	}
	f.c.Close()
	<-done
	eventually(t, "the reset streams give their slots back", func() error {
		if n := slots(); n != 0 {
			return fmt.Errorf("%d slots still taken", n)
		}
		if n := inFlight.Load(); n != 0 {
			return fmt.Errorf("%d requests still held upstream", n)
		}
		return nil
	})
	hc := h2cTestClient()
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://" + addr + "/public/after")
	if err != nil {
		t.Fatalf("a request after the flood: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("a request after the flood: %d, want 200", resp.StatusCode)
	}
}

// TestH2ContinuationFloodCut: a header block that never ends (HEADERS,
// then CONTINUATION frames without END_HEADERS, CVE-2023-45288) is cut
// once it passes the head limit: the engine closes the connection long
// before the client has sent 16 MiB, and nothing reaches the upstream.
func TestH2ContinuationFloodCut(t *testing.T) {
	var reached atomic.Int32
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached.Add(1) }))
	_, addr := engineOn(t, up, Config{Dial: unmarked, Resolver: conformance.AllowAll()})
	f := dialH2Flooder(t, addr)
	done := make(chan *http2.GoAwayFrame, 1)
	go func() { done <- f.drain() }()
	// Literal fields without indexing, 16 KiB each: the decoder must hold
	// or count every one.
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	enc.WriteField(hpack.HeaderField{Name: "x-flood", Value: string(bytes.Repeat([]byte{'a'}, 16<<10-16)), Sensitive: true})
	field := hb.Bytes()
	block := h2Block("/public/x")
	sent := 0
	err := f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndStream: true})
	for err == nil && sent < 16<<20 {
		err = f.fr.WriteContinuation(1, false, field)
		sent += len(field)
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("sent %d bytes of one header block and the connection is still open (%v)", sent, err)
	}
	<-done
	if n := reached.Load(); n != 0 {
		t.Fatalf("%d requests reached the upstream", n)
	}
}

// TestH2PingFloodCut: a client that sends PING frames without reading
// their acknowledgements (CVE-2019-9512) makes the engine queue them; it
// closes the connection before that queue grows without bound. (SETTINGS
// frames are acknowledged by one ACK however many came, so they queue
// nothing.)
func TestH2PingFloodCut(t *testing.T) {
	_, addr := engineOn(t, conformance.StartUpstream(t), Config{Dial: unmarked, Resolver: conformance.AllowAll()})
	f := dialH2Flooder(t, addr)
	// 4,096 PINGs a write: the acknowledgements first fill the socket
	// buffers (megabytes on loopback), and only then queue in the engine.
	var batch bytes.Buffer
	bf := http2.NewFramer(&batch, nil)
	for i := 0; i < 4096; i++ {
		bf.WritePing(false, [8]byte{byte(i), byte(i >> 8)})
	}
	var err error
	n := 0
	for ; err == nil && n < 16_000_000; n += 4096 {
		_, err = f.c.Write(batch.Bytes())
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%d PING frames unread and the connection is still open (%v)", n, err)
	}
}
