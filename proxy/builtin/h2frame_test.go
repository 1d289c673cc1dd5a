package builtin

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/membrane-fw/membrane/proxy/conformance"
)

// TestH2ClientFramesHeldTo16KiB: the engine takes frames of at most
// 16 KiB (HTTP/2's initial SETTINGS_MAX_FRAME_SIZE) from a client. Its
// HTTP/2 reader keeps a buffer as large as the largest frame it read for
// the connection's life, so with net/http's 1 MiB every client
// connection could pin 1 MiB of membraned's memory with one frame of a
// type it then ignores. A larger frame ends the connection with
// FRAME_SIZE_ERROR.
func TestH2ClientFramesHeldTo16KiB(t *testing.T) {
	_, addr := engineOn(t, conformance.StartUpstream(t), Config{Dial: unmarked, Resolver: conformance.AllowAll()})
	f := dialH2Flooder(t, addr)
	// An extension frame type, which a receiver ignores (RFC 9113
	// section 4.1), then a PING to learn whether it was taken.
	send := func(size int, ping byte) {
		t.Helper()
		if err := f.fr.WriteRawFrame(0xfa, 0, 0, make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		if err := f.fr.WritePing(false, [8]byte{ping}); err != nil {
			t.Fatal(err)
		}
	}
	// next reads frames up to a PING acknowledgement or a GOAWAY.
	next := func() http2.Frame {
		t.Helper()
		for {
			fr, err := f.fr.ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			switch fr := fr.(type) {
			case *http2.PingFrame:
				if fr.IsAck() {
					return fr
				}
			case *http2.GoAwayFrame:
				return fr
			}
		}
	}
	send(16<<10, 1)
	if fr, ok := next().(*http2.PingFrame); !ok || fr.Data[0] != 1 {
		t.Fatalf("a frame of 16 KiB: got %v, want the PING acknowledged", fr)
	}
	send(16<<10+1, 2)
	switch fr := next().(type) {
	case *http2.GoAwayFrame:
		if fr.ErrCode != http2.ErrCodeFrameSize {
			t.Fatalf("a frame of 16 KiB + 1 byte: GOAWAY %v, want FRAME_SIZE_ERROR", fr.ErrCode)
		}
	default:
		t.Fatalf("a frame of 16 KiB + 1 byte was taken: %v", fr)
	}
}

// TestH2UpstreamFramesHeldTo16KiB: the engine takes frames of at most
// 16 KiB from an upstream too, whose connections are each a client
// connection's own: an upstream that sends a larger DATA frame than the
// engine allowed gets the client an error, not the body. (net/http's
// transport allows 16 KiB unless told otherwise; the engine says so.)
func TestH2UpstreamFramesHeldTo16KiB(t *testing.T) {
	for _, tc := range []struct {
		size int
		ok   bool
	}{{16 << 10, true}, {32 << 10, false}} {
		_, addr := engineOn(t, startRawH2Upstream(t, tc.size), Config{Dial: unmarked, Resolver: conformance.AllowAll()})
		hc := h2cTestClient()
		resp, err := hc.Get("http://" + addr + "/public/big")
		var body []byte
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		got := err == nil && resp.StatusCode == 200 && len(body) == tc.size
		hc.CloseIdleConnections()
		if got != tc.ok {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			t.Fatalf("a DATA frame of %d bytes from upstream: status %d, %d bytes of body, %v; relayed: %v, want %v", tc.size, status, len(body), err, got, tc.ok)
		}
	}
}

// startRawH2Upstream is an h2c server that answers every request with a
// body of size bytes in one DATA frame, whatever frame size its client
// allowed.
func startRawH2Upstream(t *testing.T, size int) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
					return
				}
				fr := http2.NewFramer(c, c)
				fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
				fr.WriteSettings()
				var hb bytes.Buffer
				hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.SettingsFrame:
						if !f.IsAck() {
							fr.WriteSettingsAck()
						}
					case *http2.MetaHeadersFrame:
						fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
						fr.WriteData(f.StreamID, true, make([]byte, size))
					}
				}
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).AddrPort()
}
