package builtin

import (
	"bytes"
	"fmt"
	"testing"

	"golang.org/x/net/http2"
)

// TestH2UploadsHoldLittleBeyondTheirWindows: an HTTP/2 request body on
// its way to an upstream that does not take it yet holds its windows'
// worth in membraned and a frame's more a stream, whatever frame size
// the upstream accepts: net/http's transport reads a body ahead into a
// buffer of the upstream's largest frame, up to 512 KiB, so against a Go
// server (which accepts 1 MiB frames) 100 uploads held some 50 MiB.
func TestH2UploadsHoldLittleBeyondTheirWindows(t *testing.T) {
	const streams = 100
	const bound = 24 << 20
	var before int64
	settled(t, stuckUploads(t, streams, func() { before = memInUse() }))
	if held := memInUse() - before; held > bound {
		t.Fatalf("%d uploads waiting on their upstream hold %d MiB, want at most %d MiB", streams, held>>20, bound>>20)
	} else {
		t.Logf("%d uploads hold %d KiB", streams, held>>10)
	}
}

// TestFrameSizeClamp: the clamp rewrites SETTINGS_MAX_FRAME_SIZE in every
// SETTINGS frame, however the frames are split across reads, and leaves
// the other settings and frames as they were.
func TestFrameSizeClamp(t *testing.T) {
	var in bytes.Buffer
	fr := http2.NewFramer(&in, nil)
	fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 12345})
	// A payload that reads like a SETTINGS frame's.
	fr.WriteData(1, false, []byte{0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 5, 0, 0x10, 0, 0})
	fr.WriteSettingsAck()
	fr.WritePing(false, [8]byte{0, 5, 0, 0x10, 0, 0, 0, 0})
	fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 7}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1<<24 - 1})
	stream := in.Bytes()
	for size := 1; size <= len(stream); size++ {
		b := bytes.Clone(stream)
		var c frameSizeClamp
		for i := 0; i < len(b); i += size {
			c.scan(b[i:min(i+size, len(b))])
		}
		var got []string
		r := http2.NewFramer(nil, bytes.NewReader(b))
		for {
			f, err := r.ReadFrame()
			if err != nil {
				break
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				f.ForeachSetting(func(s http2.Setting) error {
					got = append(got, s.String())
					return nil
				})
				if f.IsAck() {
					got = append(got, "ack")
				}
			case *http2.DataFrame:
				got = append(got, fmt.Sprintf("data %x", f.Data()))
			case *http2.PingFrame:
				got = append(got, fmt.Sprintf("ping %x", f.Data))
			}
		}
		want := []string{"[MAX_FRAME_SIZE = 16384]", "[INITIAL_WINDOW_SIZE = 12345]", "data 000006040000000000000500100000", "ack",
			"ping 0005001000000000", "[MAX_CONCURRENT_STREAMS = 7]", "[MAX_FRAME_SIZE = 16384]"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("read %d bytes at a time: %q, want %q", size, got, want)
		}
	}
}
