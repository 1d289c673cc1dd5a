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
	rc   syscall.RawConn
	peek [1]byte
	// progress, when set, is called after every read or write that moved
	// bytes (the HTTP/1 loop's stream idle timeout).
	progress func()
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
	return &rawIO{rc: rc}
}

func (r *rawIO) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n uintptr
	var errno syscall.Errno
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			n, _, errno = syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
			if errno != syscall.EINTR {
				return errno != syscall.EAGAIN
			}
		}
	})
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

// waitReadable returns when the socket has something to read (data, the
// peer's FIN or an error), without reading it and without a buffer, or
// with the read deadline's error. It peeks where a read would have found
// nothing, and takes the wake that follows as readiness without another
// system call: a spurious one only costs the next read a wait.
func (r *rawIO) waitReadable() error {
	waited := false
	var errno syscall.Errno
	err := r.rc.Read(func(fd uintptr) bool {
		if waited {
			errno = 0
			return true
		}
		for {
			_, _, errno = syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&r.peek[0])), 1,
				syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
			switch errno {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				waited = true
				return false
			}
			return true
		}
	})
	if err == nil && errno != 0 {
		err = os.NewSyscallError("recvfrom", errno)
	}
	return err
}

// readable reports, without waiting and without reading, whether the
// socket has something to read: data, the peer's FIN or an error.
func (r *rawIO) readable() bool {
	var errno syscall.Errno
	r.rc.Read(func(fd uintptr) bool {
		for {
			_, _, errno = syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&r.peek[0])), 1,
				syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
			if errno != syscall.EINTR {
				return true
			}
		}
	})
	return errno != syscall.EAGAIN
}

// maxRawWrite bounds one write system call.
const maxRawWrite = 64 << 10

func (r *rawIO) Write(b []byte) (int, error) {
	var done int
	var errno syscall.Errno
	err := r.rc.Write(func(fd uintptr) bool {
		for done < len(b) {
			// In pieces, so that a long body's copy is not one stretch the
			// scheduler cannot preempt.
			n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[done])), uintptr(min(len(b)-done, maxRawWrite)))
			switch e {
			case 0:
				done += int(n)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if err == nil && errno != 0 {
		err = os.NewSyscallError("write", errno)
	}
	if done > 0 && r.progress != nil {
		r.progress()
	}
	return done, err
}
