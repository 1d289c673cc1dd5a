package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ListenTransparent opens the proxy's listeners on port: one IPv4 and one
// IPv6 (IPV6_V6ONLY) socket, both with IP_TRANSPARENT, so the datapath can
// assign connections to any destination address to them and the accepted
// socket's local address is the original destination, and both marked
// MarkProxyListener, so the datapath assigns them to no other socket that
// holds the port. Port 0 picks a free
// port (the same for both families). Needs CAP_NET_ADMIN. When the host has
// no IPv6, the IPv6 listener is skipped.
func ListenTransparent(ctx context.Context, port uint16) ([]net.Listener, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		return setTransparent(network, c)
	}}
	l4, err := lc.Listen(ctx, "tcp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return nil, fmt.Errorf("transparent listener on port %d: %w%s", port, err, listenHint(port, err))
	}
	port = uint16(l4.Addr().(*net.TCPAddr).Port)
	l6, err := lc.Listen(ctx, "tcp6", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		if errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EADDRNOTAVAIL) {
			return []net.Listener{l4}, nil
		}
		l4.Close()
		return nil, fmt.Errorf("transparent IPv6 listener on port %d: %w%s", port, err, listenHint(port, err))
	}
	return []net.Listener{l4, l6}, nil
}

// listenHint says what to do about a listener that could not be opened.
func listenHint(port uint16, err error) string {
	switch {
	case errors.Is(err, unix.EADDRINUSE):
		return fmt.Sprintf(" (port %d is in use by another process: stop it, or set l7 { port } in membrane.hcl to a free port)", port)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return " (membraned needs CAP_NET_ADMIN)"
	}
	return ""
}

func setTransparent(network string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(MarkProxyListener)); serr != nil {
			serr = fmt.Errorf("SO_MARK: %w", serr)
			return
		}
		if network == "tcp6" {
			if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); serr != nil {
				serr = fmt.Errorf("IPV6_V6ONLY: %w", serr)
				return
			}
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); serr != nil {
				serr = fmt.Errorf("IPV6_TRANSPARENT: %w", serr)
			}
			return
		}
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); serr != nil {
			serr = fmt.Errorf("IP_TRANSPARENT: %w", serr)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// OriginalDst is the original destination of a connection accepted on a
// transparent listener: its local address.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	a, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("not a TCP connection: %v", c.LocalAddr())
	}
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// RemoteAddrPort is c's peer address, IPv4-mapped addresses unmapped.
func RemoteAddrPort(c net.Conn) netip.AddrPort {
	a, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// DialMarked is the default Dialer: a TCP connection to dst whose socket has
// SO_MARK = mark (needs CAP_NET_ADMIN when mark != 0).
func DialMarked(ctx context.Context, dst netip.AddrPort, mark uint32) (net.Conn, error) {
	d := net.Dialer{Control: func(network, address string, c syscall.RawConn) error {
		if mark == 0 {
			return nil
		}
		return setMark(c, mark)
	}}
	return d.DialContext(ctx, "tcp", dst.String())
}

// setMark sets SO_MARK = mark on the socket behind c.
func setMark(c syscall.RawConn, mark uint32) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_MARK %#x: %w", mark, serr)
	}
	return nil
}

// InNetNS runs fn on a thread switched into network namespace ns, so the
// sockets fn creates (listeners, dials) live there. The calling goroutine's
// thread is restored afterwards. Used by tests and by anything that serves a
// namespace other than the daemon's.
func InNetNS(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter netns: %w", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// A thread stuck in the wrong namespace must not run other
			// goroutines: leave it locked so the runtime retires it.
			runtime.LockOSThread()
		}
	}()
	return fn()
}

// SetRefused sets SO_MARK = MarkRefused on c, an accepted client
// connection the proxy refuses because Docker isolates its ends: its
// answer leaves the host untracked (see mark.go). Without this, the first
// packet of the proxy's side that conntrack picks up (an ACK, the 403)
// would meet Docker's MASQUERADE rule for the destination's subnet on the
// way out of another bridge, the client would get it from the bridge's
// address, and would hang instead of being refused.
func SetRefused(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return fmt.Errorf("mark refused connection: %T has no socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("mark refused connection: %w", err)
	}
	if err := setMark(rc, MarkRefused); err != nil {
		return fmt.Errorf("mark refused connection: %w", err)
	}
	return nil
}
