// Command markdial sets SO_MARK (and, to listen, IP_TRANSPARENT) with
// whatever capabilities the process has, for the bpf tests that check what
// such a process can do (proxytrust_test.go). It prints "marked" once the
// options are set. Usage:
//
//	markdial dial MARK ADDR:PORT [SRC]  -> prints "connected" or error; SRC: local address to bind
//	markdial listen MARK PORT      -> listens on 0.0.0.0:PORT with SO_MARK and IP_TRANSPARENT, prints first request line
//	markdial inject MARK ADDR:PORT -> sends a TCP SYN 192.0.2.1:40000 -> ADDR:PORT (IPv4) on lo through a
//	                                  packet socket with SO_MARK (it skips OUTPUT), prints "injected".
//	                                  Not from 127.0.0.1: only packets that came through lo's own
//	                                  output may carry a loopback address into the stack
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func ctl(mark int, transparent bool) func(string, string, syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark); serr != nil {
				serr = fmt.Errorf("SO_MARK: %w", serr)
				return
			}
			if transparent {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); serr != nil {
					serr = fmt.Errorf("IP_TRANSPARENT: %w", serr)
				}
			}
		})
		if serr == nil {
			fmt.Println("marked")
		}
		return serr
	}
}

func main() {
	m, _ := strconv.ParseUint(os.Args[2], 0, 32)
	fmt.Fprintf(os.Stderr, "uid=%d\n", os.Getuid())
	switch os.Args[1] {
	case "dial":
		d := net.Dialer{Timeout: 2 * time.Second, Control: ctl(int(m), false)}
		if len(os.Args) > 4 {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(os.Args[4])}
		}
		c, err := d.Dial("tcp4", os.Args[3])
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Fprintf(c, "GET /x HTTP/1.0\r\n\r\n")
		c.SetDeadline(time.Now().Add(2 * time.Second))
		l, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Println("connected", l)
	case "inject":
		dst, err := netip.ParseAddrPort(os.Args[3])
		if err != nil || !dst.Addr().Is4() {
			fmt.Println("error: want IPv4 ADDR:PORT:", os.Args[3])
			os.Exit(1)
		}
		if err := inject(int(m), dst); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("injected")
	case "listen":
		lc := net.ListenConfig{Control: ctl(int(m), true)}
		ln, err := lc.Listen(context.Background(), "tcp4", "0.0.0.0:"+os.Args[3])
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("listening")
		c, err := ln.Accept()
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		l, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Printf("ACCEPTED %s -> %s: %q\n", c.RemoteAddr(), c.LocalAddr(), l)
		c.Write([]byte("HTTP/1.0 200 OK\r\n\r\nsquatter\n"))
		c.Close()
	}
}

func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

func inject(mark int, to netip.AddrPort) error {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, mark); err != nil {
		return fmt.Errorf("SO_MARK: %w", err)
	}
	fmt.Println("marked")
	a := to.Addr().As4()
	src, dst := []byte{192, 0, 2, 1}, a[:]
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], to.Port())
	binary.BigEndian.PutUint32(tcp[4:], 1)
	tcp[12], tcp[13] = 5<<4, 0x02 // SYN
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	pseudo := append(append(append([]byte{}, src...), dst...), 0, 6, 0, 20)
	binary.BigEndian.PutUint16(tcp[16:], csum(append(pseudo, tcp...)))
	ip := []byte{0x45, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0}
	ip = append(append(ip, src...), dst...)
	binary.BigEndian.PutUint16(ip[10:], csum(ip))
	frame := append(append(make([]byte, 12), 0x08, 0x00), append(ip, tcp...)...)
	return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: lo.Index, Protocol: 0x0008}) // htons(ETH_P_IP)
}
