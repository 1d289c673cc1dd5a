package builtin

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestH2StreamStalledByFlowControlEnds: an HTTP/2 client that gives the
// proxy no flow-control window (SETTINGS_INITIAL_WINDOW_SIZE 0, no
// WINDOW_UPDATE) while it reads the connection, so that the connection's
// writes never stall, cannot hold its streams for ever: a stream whose
// response cannot move for the stream idle timeout is reset, an allowed
// one in the middle of its body and a refused one whose 403 was written
// whole, and one whose upstream did not answer and whose 504 cannot
// leave; and the streams' slots of the connection limits come back.
func TestH2StreamStalledByFlowControlEnds(t *testing.T) {
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/public/silent" {
			<-block
			return
		}
		w.Write(make([]byte, 1<<20))
	}))
	e, addr := engineOn(t, up, Config{StreamIdleTimeout: 300 * time.Millisecond, Dial: unmarked})
	w := dialWindowlessH2(t, addr)
	c, fr := w.c, w.fr
	get := func(id uint32, path string) { w.get(t, id, path) }
	get(1, "/public/big") // allowed, 1 MiB
	get(3, "/denied")     // 403
	get(5, "/public/silent")
	// The client reads everything the proxy writes, and acknowledges its
	// settings, but never opens a window.
	reset := map[uint32]bool{}
	deadline := time.Now().Add(10 * time.Second) // the streams end after 300 ms
	c.SetReadDeadline(deadline)
	for len(reset) < 3 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("streams still open after %v without a window (reset: %v): %v", 10*time.Second, reset, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			reset[f.StreamID] = true
		case *http2.DataFrame:
			if f.StreamEnded() {
				t.Fatalf("stream %d ended with no window given", f.StreamID)
			}
		}
	}
	eventually(t, "the stalled streams' slots come back", func() error {
		e.limit.mu.Lock()
		defer e.limit.mu.Unlock()
		if e.limit.total != 1 { // the connection's own
			return fmt.Errorf("%d slots taken, want 1", e.limit.total)
		}
		return nil
	})
}

// TestH2StreamHoldsItsSlotUntilItsResponseLeft: an HTTP/2 stream keeps
// its slot of the connection limits until its response has left, not
// only while it is judged and forwarded: refused streams whose 403 waits
// on a window the client does not open take slots, so a client cannot
// park more of them than the limits allow (250 on each connection).
func TestH2StreamHoldsItsSlotUntilItsResponseLeft(t *testing.T) {
	const streams = 3
	e, addr := engineOn(t, startH2Upstream(t, http.NotFoundHandler()), Config{StreamIdleTimeout: time.Minute, Dial: unmarked})
	w := dialWindowlessH2(t, addr)
	for i := range streams {
		w.get(t, uint32(2*i+1), "/denied")
	}
	w.drain()
	// The streams are refused at once; their 403s cannot leave.
	time.Sleep(300 * time.Millisecond)
	eventually(t, "the stalled refused streams hold their slots", func() error {
		e.limit.mu.Lock()
		defer e.limit.mu.Unlock()
		if e.limit.total != 1+streams {
			return fmt.Errorf("%d slots taken, want %d (the connection's and the streams')", e.limit.total, 1+streams)
		}
		return nil
	})
	w.c.Close()
	eventually(t, "the slots come back when the connection closes", func() error {
		e.limit.mu.Lock()
		defer e.limit.mu.Unlock()
		if e.limit.total != 0 {
			return fmt.Errorf("%d slots taken", e.limit.total)
		}
		return nil
	})
}

// windowlessH2 is a raw HTTP/2 client connection that gives the proxy no
// flow-control window (SETTINGS_INITIAL_WINDOW_SIZE 0, and no
// WINDOW_UPDATE ever): no byte of a response body can reach it.
type windowlessH2 struct {
	c   net.Conn
	fr  *http2.Framer
	hb  bytes.Buffer
	enc *hpack.Encoder
}

func dialWindowlessH2(t *testing.T, addr string) *windowlessH2 {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	w := &windowlessH2{c: c, fr: http2.NewFramer(c, c)}
	w.enc = hpack.NewEncoder(&w.hb)
	w.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	return w
}

// get opens stream id with a GET of path.
func (w *windowlessH2) get(t *testing.T, id uint32, path string) {
	t.Helper()
	w.hb.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "svc"}, {":path", path}} {
		w.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: w.hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
}

// drain reads every frame in the background, acknowledging settings, so
// that none of the proxy's connection writes stalls.
func (w *windowlessH2) drain() {
	go func() {
		for {
			f, err := w.fr.ReadFrame()
			if err != nil {
				return
			}
			if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
				w.fr.WriteSettingsAck()
			}
		}
	}()
}
