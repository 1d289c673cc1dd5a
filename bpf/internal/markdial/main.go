// Command markdial sets SO_MARK (and, to listen, IP_TRANSPARENT) with
// whatever capabilities the process has, for the bpf tests that check what
// such a process can do (proxytrust_test.go). It prints "marked" once the
// options are set. Usage:
//
//	markdial dial MARK ADDR:PORT [SRC]  -> prints "connected" or error; SRC: local address to bind
//	markdial listen MARK PORT      -> listens on 0.0.0.0:PORT with SO_MARK and IP_TRANSPARENT, prints first request line
package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
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
