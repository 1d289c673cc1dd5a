package api

import (
	"context"
	"encoding/binary"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PeerCred is who is on the other end of a unix socket connection.
type PeerCred struct {
	PID    int32
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups (SO_PEERGROUPS)
}

type credKey struct{}

// connContext stores the peer's credentials in every request's context.
// The kernel records them at connect() time, so they cannot be forged by
// the client.
func connContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	cred, err := peerCred(uc)
	if err != nil {
		return ctx
	}
	return context.WithValue(ctx, credKey{}, cred)
}

func peerCred(c *net.UnixConn) (*PeerCred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *PeerCred
	var serr error
	err = raw.Control(func(fd uintptr) {
		u, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			serr = err
			return
		}
		cred = &PeerCred{PID: u.Pid, UID: u.Uid, GID: u.Gid}
		cred.Groups = peerGroups(int(fd))
	})
	if err != nil {
		return nil, err
	}
	return cred, serr
}

// peerGroups reads SO_PEERGROUPS (Linux 4.13+); nil when unavailable.
// The kernel answers ERANGE with the length it needs when the buffer is
// short (a peer may have up to NGROUPS_MAX groups): ask again with it.
func peerGroups(fd int) []uint32 {
	buf := make([]byte, 4*256)
	for {
		l := uint32(len(buf))
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e == syscall.ERANGE && int(l) > len(buf) {
			buf = make([]byte, l)
			continue
		}
		if e != 0 {
			return nil
		}
		out := make([]uint32, 0, l/4)
		for i := 0; i+4 <= int(l); i += 4 {
			out = append(out, binary.NativeEndian.Uint32(buf[i:]))
		}
		return out
	}
}
