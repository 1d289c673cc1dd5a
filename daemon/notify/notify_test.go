package notify

import (
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNotifySendsStatesToTheSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "2000000")
	t.Setenv("WATCHDOG_PID", "")
	n := New(slog.New(slog.DiscardHandler))
	if got := n.WatchdogInterval(); got != time.Second {
		t.Fatalf("watchdog interval %v, want 1s", got)
	}
	n.Ready()
	n.Status("3 endpoints")
	n.Watchdog()
	n.Stopping()
	var got []string
	buf := make([]byte, 256)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	for range 4 {
		k, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(buf[:k]))
	}
	want := "READY=1|STATUS=3 endpoints|WATCHDOG=1|STOPPING=1"
	if strings.Join(got, "|") != want {
		t.Fatalf("got %q, want %q", strings.Join(got, "|"), want)
	}
}

func TestNoSocketIsSilent(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "")
	n := New(slog.New(slog.DiscardHandler))
	n.Ready()
	n.Watchdog()
	if n.WatchdogInterval() != 0 {
		t.Fatal("watchdog enabled without WATCHDOG_USEC")
	}
}
