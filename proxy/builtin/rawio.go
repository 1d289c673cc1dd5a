package builtin

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// rawIO reads and writes a connected socket with raw system calls, through
// the connection's syscall.RawConn, so the runtime's poller still waits for
// readiness and keeps deadlines. Reads and writes on a non-blocking socket
// never block, so they need not tell the scheduler they are in a system
// call (net.Conn's do): on a loopback or veth a write runs the peer's whole
// receive path inline and often lasts long enough for the scheduler's
// monitor to hand the processor to another thread, a wake-up per request
// for nothing.
type rawIO struct {
	rc syscall.RawConn
	// progress, when set, is called after every read or write that moved
	// bytes (the HTTP/1 loop's stream idle timeout).
	progress func()

	// The callbacks given to rc and their arguments and results, bound
	// once in newRawIO: a closure per call would be allocated per call.
	// A read, a peek and a write may run at once (a tunnel's two copies),
	// so each has its own.
	readFn, peekFn, waitFn, writeFn, awaitFn func(fd uintptr) bool
	rbuf, wbuf                               []byte
	rn                                       uintptr
	wdone                                    int
	waited                                   bool
	rerr, perr, werr                         syscall.Errno
	peek                                     [1]byte

	// awaitAnswer, set before a Write, makes that Write wait until the
	// socket is readable once it wrote every byte (writeAwait); written
	// says it did.
	awaitAnswer, written bool
}

// newRawIO is rawIO for c, or c itself when it has no raw connection.
func newRawIO(c net.Conn) io.ReadWriter {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawIO{rc: rc}
	r.readFn, r.peekFn, r.waitFn, r.writeFn, r.awaitFn = r.read, r.peekNow, r.peekWait, r.write, r.writeAwait
	return r
}

func (r *rawIO) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r.rbuf = b
	err := r.rc.Read(r.readFn)
	r.rbuf = nil
	n, errno := r.rn, r.rerr
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, os.NewSyscallError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	if r.progress != nil {
		r.progress()
	}
	return int(n), nil
}

// read is Read's callback: false while the socket has nothing to read.
func (r *rawIO) read(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.rbuf[0])), uintptr(len(r.rbuf)))
		if errno == syscall.EINTR {
			continue
		}
		r.rn, r.rerr = n, errno
		return errno != syscall.EAGAIN
	}
}

// peekSocket peeks at one byte without waiting.
func (r *rawIO) peekSocket(fd uintptr) syscall.Errno {
	for {
		_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&r.peek[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if errno != syscall.EINTR {
			return errno
		}
	}
}

// waitReadable returns when the socket has something to read (data, the
// peer's FIN or an error), without reading it and without a buffer, or
// with the read deadline's error. It peeks where a read would have found
// nothing, and takes the wake that follows as readiness without another
// system call: a spurious one only costs the next read a wait.
func (r *rawIO) waitReadable() error {
	r.waited = false
	err := r.rc.Read(r.waitFn)
	if err == nil && r.perr != 0 {
		err = os.NewSyscallError("recvfrom", r.perr)
	}
	return err
}

// peekWait is waitReadable's callback.
func (r *rawIO) peekWait(fd uintptr) bool {
	if r.waited {
		r.perr = 0
		return true
	}
	r.perr = r.peekSocket(fd)
	if r.perr == syscall.EAGAIN {
		r.waited = true
		return false
	}
	return true
}

// readable reports, without waiting and without reading, whether the
// socket has something to read: data, the peer's FIN or an error.
func (r *rawIO) readable() bool {
	r.rc.Read(r.peekFn)
	return r.perr != syscall.EAGAIN
}

// peekNow is readable's callback.
func (r *rawIO) peekNow(fd uintptr) bool {
	r.perr = r.peekSocket(fd)
	return true
}

// maxRawWrite bounds one write system call.
const maxRawWrite = 64 << 10

func (r *rawIO) Write(b []byte) (int, error) {
	r.wbuf, r.wdone, r.werr = b, 0, 0
	if r.awaitAnswer && len(b) > 0 {
		r.awaitAnswer, r.written = false, false
		err := r.rc.Read(r.awaitFn)
		switch {
		case r.written:
			// Written whole. Whatever ended the wait (the answer, the
			// peer's close, the read deadline, Close) the Read that
			// follows meets again.
			r.wbuf = nil
			if r.progress != nil {
				r.progress()
			}
			return len(b), nil
		case r.werr != 0:
			err = os.NewSyscallError("write", r.werr)
			fallthrough
		case err != nil:
			r.wbuf = nil
			if r.wdone > 0 && r.progress != nil {
				r.progress()
			}
			return r.wdone, err
		}
		// The send buffer is full: on as usual.
	}
	err := r.rc.Write(r.writeFn)
	r.wbuf = nil
	done := r.wdone
	if err == nil && r.werr != 0 {
		err = os.NewSyscallError("write", r.werr)
	}
	if done > 0 && r.progress != nil {
		r.progress()
	}
	return done, err
}

// writeAwait is Write's callback when an answer is awaited: it writes b
// and then waits for the socket to be readable, all within one Read of
// the poller, so the answer's arrival is the wake-up. A Write followed by
// a Read would first find nothing in one read system call (the peer cannot
// have answered yet), then wait. The poller forgets readiness from before
// the Read, so this suits only a message whose answer cannot begin before
// the message is written whole: a bodiless request, say, and not one whose
// server may answer early while its body is sent. On a full send buffer it
// returns at once and Write goes on the usual way.
func (r *rawIO) writeAwait(fd uintptr) bool {
	if r.written {
		return true
	}
	if !r.write(fd) || r.werr != 0 {
		return true // the send buffer is full, or the write failed
	}
	r.written = true
	return false
}

// write is Write's callback: false while the socket's send buffer is full.
func (r *rawIO) write(fd uintptr) bool {
	b := r.wbuf
	for r.wdone < len(b) {
		// In pieces, so that a long body's copy is not one stretch the
		// scheduler cannot preempt.
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[r.wdone])), uintptr(min(len(b)-r.wdone, maxRawWrite)))
		switch e {
		case 0:
			r.wdone += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			r.werr = e
			return true
		}
	}
	return true
}
