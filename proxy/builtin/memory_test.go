package builtin

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"
)

// memInUse is the heap and goroutine stacks in use, after two collections
// (the second empties what sync.Pools kept from the first).
func memInUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}

// idleHeld opens n connections to addr, sends req on each and reads the
// response, which must have status, and returns the memory in use while
// they idle over what was in use before. It closes them and lets their
// servers see the ends before it returns, so that measurements follow one
// another cleanly.
func idleHeld(tb testing.TB, addr string, n int, req string, status int) int64 {
	tb.Helper()
	goroutines := runtime.NumGoroutine()
	before := memInUse()
	var cs []net.Conn
	defer func() {
		for _, c := range cs {
			c.Close()
		}
		for i := 0; i < 500 && runtime.NumGoroutine() > goroutines; i++ {
			time.Sleep(10 * time.Millisecond)
		}
	}()
	for range n {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			tb.Fatal(err)
		}
		cs = append(cs, c)
		io.WriteString(c, req)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			tb.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != status {
			tb.Fatalf("status %d %q, want %d", resp.StatusCode, body, status)
		}
	}
	time.Sleep(50 * time.Millisecond) // the servers' goroutines settle in their reads
	return memInUse() - before
}
