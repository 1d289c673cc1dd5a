package main

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"

	"golang.org/x/sys/unix"
)

// serveRelay is the benchmark's reference: about the least work a userspace
// proxy can do per request. One thread, one epoll set, non-blocking sockets, and every byte
// read from one side written to the other at once: no parsing, no policy,
// no Go scheduler between a socket's readiness and its read. What the
// built-in engine costs beyond this is its own; what this costs is the
// machine's (the loopback writes, the wake-ups). Its one thread can be
// slower than a proxy with more when the machine is busy. IPv4 only.
func serveRelay(ctx context.Context, listen, upstream string) error {
	la, err := netip.ParseAddrPort(listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	ua, err := netip.ParseAddrPort(upstream)
	if err != nil {
		return fmt.Errorf("-upstream: %w", err)
	}
	if !la.Addr().Is4() || !ua.Addr().Is4() {
		return fmt.Errorf("relay: IPv4 addresses only")
	}
	runtime.LockOSThread()
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(lfd)
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return err
	}
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Port: int(la.Port()), Addr: la.Addr().As4()}); err != nil {
		return err
	}
	if err := unix.Listen(lfd, 1024); err != nil {
		return err
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		return err
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(ep)
	// An eventfd wakes the loop when ctx ends.
	stop, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(stop)
	go func() {
		<-ctx.Done()
		unix.Write(stop, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}()
	for _, fd := range []int{lfd, stop} {
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			return err
		}
	}
	fmt.Printf("listening %s:%d\n", la.Addr(), sa.(*unix.SockaddrInet4).Port)

	peer := map[int]int{}
	closePair := func(fd int) {
		p := peer[fd]
		delete(peer, fd)
		delete(peer, p)
		unix.Close(fd)
		unix.Close(p)
	}
	buf := make([]byte, 64<<10)
	evs := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(ep, evs, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		for _, ev := range evs[:n] {
			fd := int(ev.Fd)
			switch fd {
			case stop:
				for fd := range peer {
					unix.Close(fd)
				}
				return nil
			case lfd:
				acceptAll(lfd, ep, ua, peer)
				continue
			}
			p, ok := peer[fd]
			if !ok {
				continue
			}
			m, err := unix.Read(fd, buf)
			if err == unix.EAGAIN {
				continue
			}
			if m <= 0 || writeAll(p, buf[:m]) != nil {
				closePair(fd)
			}
		}
	}
}

func acceptAll(lfd, ep int, up netip.AddrPort, peer map[int]int) {
	for {
		cfd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return
		}
		ufd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			unix.Close(cfd)
			continue
		}
		// A blocking connect: on loopback it is immediate.
		if err := unix.Connect(ufd, &unix.SockaddrInet4{Port: int(up.Port()), Addr: up.Addr().As4()}); err != nil {
			unix.Close(cfd)
			unix.Close(ufd)
			continue
		}
		unix.SetNonblock(ufd, true)
		for _, fd := range []int{cfd, ufd} {
			unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		}
		peer[cfd], peer[ufd] = ufd, cfd
		unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, cfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(cfd)})
		unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ufd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(ufd)})
	}
}

// writeAll writes b to a non-blocking socket, waiting for room when it is
// full (rare: the benchmark's messages are small).
func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EAGAIN {
			if _, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, -1); err != nil && err != unix.EINTR {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
