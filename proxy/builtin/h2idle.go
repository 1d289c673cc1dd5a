package builtin

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// errStreamIdle ends an HTTP/2 stream none of whose bytes moved for the
// stream idle timeout (Config.StreamIdleTimeout), as the HTTP/1 loop ends
// such an exchange: a request body that stalls, an upstream that does not
// answer (504), a response the client does not take.
var errStreamIdle = errors.New("no byte of the stream moved for the stream idle timeout")

// streamIdle calls expire when no activity was marked for d, and again
// after d more without activity while expire asks to be called again.
// Marking is an atomic store; the timer re-arms itself for what is left,
// so a busy stream costs no timer operation per read or write.
type streamIdle struct {
	d      time.Duration
	last   atomic.Int64 // UnixNano of the last activity
	mu     sync.Mutex
	t      *time.Timer
	stop   bool
	expire func() (again bool)
}

func newStreamIdle(d time.Duration, expire func() (again bool)) *streamIdle {
	s := &streamIdle{d: d, expire: expire}
	s.mark()
	s.t = time.AfterFunc(d, s.check)
	return s
}

func (s *streamIdle) mark() { s.last.Store(time.Now().UnixNano()) }

func (s *streamIdle) check() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop {
		return
	}
	if left := s.d - time.Duration(time.Now().UnixNano()-s.last.Load()); left > 0 {
		s.t.Reset(left)
		return
	}
	if s.expire() {
		s.mark()
		s.t.Reset(s.d)
		return
	}
	s.stop = true
}

func (s *streamIdle) close() {
	s.mu.Lock()
	s.stop = true
	s.mu.Unlock()
	s.t.Stop()
}

// idleBody marks activity on every read of a request body that moves
// bytes.
type idleBody struct {
	io.ReadCloser
	s *streamIdle
}

func (b idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.s.mark()
	}
	return n, err
}
