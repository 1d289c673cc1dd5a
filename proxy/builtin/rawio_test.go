package builtin

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err = net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// rawIO moves bytes as net.Conn does and reports the same end-of-stream,
// deadline and closed-connection errors the engine relies on.
func TestRawIO(t *testing.T) {
	a, b := tcpPair(t)
	ra, rb := newRawIO(a), newRawIO(b)
	if _, ok := ra.(*rawIO); !ok {
		t.Fatalf("newRawIO(%T) = %T, want *rawIO", a, ra)
	}

	// Far more than the (shrunk) socket buffers hold, and several raw
	// write pieces, written before anyone reads: the writer must wait for
	// room, and the reader gets every byte in order.
	a.(*net.TCPConn).SetWriteBuffer(32 << 10)
	b.(*net.TCPConn).SetReadBuffer(32 << 10)
	want := make([]byte, 5<<20+123)
	for i := range want {
		want[i] = byte(i * 7)
	}
	done := make(chan error, 1)
	go func() {
		n, err := ra.Write(want)
		if err == nil && n != len(want) {
			err = io.ErrShortWrite
		}
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	// A writer that gives up early must fail the test, not hang it.
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(want))
	_, rerr := io.ReadFull(rb, got)
	if err := <-done; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if rerr != nil {
		t.Fatalf("reading: %v", rerr)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the bytes read differ from the bytes written")
	}

	// A read deadline ends a read that has nothing to read.
	b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := rb.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want a deadline error", err)
	}
	b.SetReadDeadline(time.Time{})

	// The peer's close is io.EOF once its bytes are read.
	if _, err := ra.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	a.Close()
	tail, err := io.ReadAll(rb)
	if err != nil || string(tail) != "last" {
		t.Fatalf("after the peer closed: %q, %v; want \"last\", nil", tail, err)
	}

	// Our own close ends a blocked read with net.ErrClosed.
	_, d := tcpPair(t)
	rd := newRawIO(d)
	errc := make(chan error, 1)
	go func() { _, err := rd.Read(make([]byte, 10)); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	d.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed connection: %v, want net.ErrClosed", err)
	}
}

// waitReadable returns when bytes arrive, leaving them to the next read;
// when the peer closes (the read then sees the end); and with the deadline
// error when nothing comes in time.
func TestWaitReadable(t *testing.T) {
	a, b := tcpPair(t)
	rb := newRawIO(b).(*rawIO)
	go func() {
		time.Sleep(50 * time.Millisecond)
		a.Write([]byte("GET / HTTP/1.1\r\n"))
	}()
	if err := rb.waitReadable(); err != nil {
		t.Fatalf("waiting for bytes: %v", err)
	}
	buf := make([]byte, 64)
	if n, err := rb.Read(buf); err != nil || string(buf[:n]) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("read after the wait: %q %v, want every byte the peer sent", buf[:n], err)
	}

	b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if err := rb.waitReadable(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("waiting past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	b.SetReadDeadline(time.Time{})

	go func() {
		time.Sleep(50 * time.Millisecond)
		a.Close()
	}()
	if err := rb.waitReadable(); err != nil {
		t.Fatalf("waiting for the peer's close: %v", err)
	}
	if _, err := rb.Read(buf); err != io.EOF {
		t.Fatalf("read after the close: %v, want io.EOF", err)
	}
}

// A Write that awaits an answer returns once the request is written whole
// and the answer is readable; a deadline or the peer's close ends the wait
// too, and the Read that follows reports it. A full send buffer makes it
// a plain Write.
func TestWriteAwaitsAnswer(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawIO(a).(*rawIO)
	req := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	answer := func(delay time.Duration, reply string) {
		go func() {
			buf := make([]byte, len(req))
			if _, err := io.ReadFull(b, buf); err != nil {
				return
			}
			time.Sleep(delay)
			b.Write([]byte(reply))
		}()
	}

	answer(50*time.Millisecond, "HTTP/1.1 200 OK\r\n")
	ra.awaitAnswer = true
	if n, err := ra.Write(req); n != len(req) || err != nil {
		t.Fatalf("write awaiting the answer: %d %v", n, err)
	}
	if !ra.readable() {
		t.Fatal("the write returned before the answer came")
	}
	buf := make([]byte, 64)
	if n, err := ra.Read(buf); err != nil || string(buf[:n]) != "HTTP/1.1 200 OK\r\n" {
		t.Fatalf("read after the wait: %q %v", buf[:n], err)
	}

	// No answer within the read deadline: the write succeeds, the read
	// fails with the deadline's error.
	answer(time.Hour, "")
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	ra.awaitAnswer = true
	if n, err := ra.Write(req); n != len(req) || err != nil {
		t.Fatalf("write whose answer does not come: %d %v", n, err)
	}
	if _, err := ra.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	a.SetReadDeadline(time.Time{})

	// More than the socket buffers hold: the write waits for room as a
	// plain one, and the peer gets every byte.
	a.(*net.TCPConn).SetWriteBuffer(32 << 10)
	b.(*net.TCPConn).SetReadBuffer(32 << 10)
	big := bytes.Repeat([]byte("x"), 4<<20)
	got := make(chan int, 1)
	go func() {
		n, _ := io.CopyN(io.Discard, b, int64(len(big)))
		got <- int(n)
	}()
	ra.awaitAnswer = true
	if n, err := ra.Write(big); n != len(big) || err != nil {
		t.Fatalf("write larger than the buffers: %d %v", n, err)
	}
	if n := <-got; n != len(big) {
		t.Fatalf("the peer got %d of %d bytes", n, len(big))
	}

	// The peer closes instead of answering: the read sees the end.
	go func() {
		io.ReadFull(b, make([]byte, len(req)))
		b.Close()
	}()
	ra.awaitAnswer = true
	if n, err := ra.Write(req); n != len(req) || err != nil {
		t.Fatalf("write the peer answers by closing: %d %v", n, err)
	}
	if _, err := ra.Read(buf); err != io.EOF {
		t.Fatalf("read after the peer's close: %v, want io.EOF", err)
	}
}
