package builtin

import (
	"errors"
	"net"
	"os"
	"time"
)

// h2Conn is a client connection served by net/http's HTTP/2 server. It
// holds the connection to the header timeout the HTTP/1 loop holds a
// request head to: net/http bounds a header block by nothing but the
// connection's idle timeout, which runs only while no stream is open, so a
// client with one stream open could trickle a header block (HEADERS, then
// CONTINUATION frames without END_HEADERS, or a HEADERS frame in part) for
// as long as it liked, holding the server's read of the connection and
// the block's decoded fields. Reading what the server reads, h2Conn
// follows the frames; a frame header, a header block, and any frame other
// than DATA (whose payload is a request body, held to the stream idle
// timeout) that has begun must end within the header timeout, or the read
// fails and net/http closes the connection.
//
// The read deadline that enforces it is set when a read leaves such a
// frame unfinished and none is set, and left in place after: when it
// expires between heads, it is cleared, and before the current head's own
// time is up, moved; either way the read is retried. So a busy connection
// sets its deadline about once a header timeout, not once a request.
//
// It also carries the connection's upstream side (h2Upstream), set by
// connContext and closed with the connection.
type h2Conn struct {
	*handoffConn
	timeout time.Duration
	up      *h2Upstream

	// preface is what is left of the connection preface, which net/http
	// reads under its own deadline (ReadHeaderTimeout).
	preface int
	// ext: a deadline set by net/http is in force; errors are its own.
	ext bool
	// armed: the deadline is set, at or before headStart+timeout.
	armed bool
	// headStart is when the head being read began (zero between heads).
	headStart time.Time

	// The frame being read: how much of its header (hdr) came, then how
	// much of its payload is left.
	hdr     [9]byte
	hdrN    int
	payload int
	typ     byte
	// block: a header block is open (a HEADERS frame without END_HEADERS
	// came, and no CONTINUATION with it yet).
	block bool
}

// HTTP/2 frame types and flags h2Conn follows (RFC 9113 section 6).
const (
	h2FrameData         = 0x0
	h2FrameHeaders      = 0x1
	h2FrameContinuation = 0x9
	h2FlagEndHeaders    = 0x4
)

func newH2Conn(hc *handoffConn, timeout time.Duration) *h2Conn {
	return &h2Conn{handoffConn: hc, timeout: timeout, preface: len(h2Preface)}
}

// h2Preface is the HTTP/2 client connection preface.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

func (c *h2Conn) Read(b []byte) (int, error) {
	for {
		n, err := c.handoffConn.Read(b)
		c.follow(b[:n])
		if err == nil {
			if c.inHead() && !c.armed && !c.ext {
				c.arm(c.headStart.Add(c.timeout))
			}
			return n, nil
		}
		if c.ext || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		// Our deadline expired.
		if c.inHead() {
			if end := c.headStart.Add(c.timeout); time.Now().Before(end) {
				c.arm(end) // set for an earlier head
			} else {
				return n, err // net/http closes the connection
			}
		} else {
			c.armed = false
			c.Conn.SetReadDeadline(time.Time{})
		}
		if n > 0 {
			return n, nil
		}
	}
}

func (c *h2Conn) arm(t time.Time) {
	c.armed = true
	c.Conn.SetReadDeadline(t)
}

// SetReadDeadline and SetDeadline: a deadline of net/http's own (it sets
// one around the preface) replaces this one until it is cleared.
func (c *h2Conn) SetReadDeadline(t time.Time) error {
	c.ext, c.armed = !t.IsZero(), false
	return c.Conn.SetReadDeadline(t)
}

func (c *h2Conn) SetDeadline(t time.Time) error {
	c.ext, c.armed = !t.IsZero(), false
	return c.Conn.SetDeadline(t)
}

// inHead: a frame header, a header block or a frame other than DATA is
// partly read.
func (c *h2Conn) inHead() bool {
	return c.hdrN > 0 || c.block || c.payload > 0 && c.typ != h2FrameData
}

// follow moves the frame state past p, the bytes just read, and notes
// when the head they leave unfinished began.
func (c *h2Conn) follow(p []byte) {
	if c.preface > 0 {
		k := min(c.preface, len(p))
		c.preface -= k
		p = p[k:]
	}
	for len(p) > 0 {
		if c.payload > 0 {
			k := min(c.payload, len(p))
			c.payload -= k
			p = p[k:]
			if c.payload == 0 {
				c.frameRead()
			}
			continue
		}
		k := copy(c.hdr[c.hdrN:], p)
		c.hdrN += k
		p = p[k:]
		if c.hdrN < len(c.hdr) {
			break
		}
		c.hdrN = 0
		c.payload = int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
		c.typ = c.hdr[3]
		if c.typ == h2FrameHeaders {
			c.block = true
		}
		if c.payload == 0 {
			c.frameRead()
		} else if !c.inHead() {
			c.headStart = time.Time{} // a DATA payload
		}
	}
	if !c.inHead() {
		c.headStart = time.Time{}
	} else if c.headStart.IsZero() {
		// The head began in what was just read.
		c.headStart = time.Now()
	}
}

// frameRead ends the frame read, and the header block with END_HEADERS.
func (c *h2Conn) frameRead() {
	if (c.typ == h2FrameHeaders || c.typ == h2FrameContinuation) && c.hdr[4]&h2FlagEndHeaders != 0 {
		c.block = false
	}
	if !c.block {
		c.headStart = time.Time{}
	}
}

var _ net.Conn = (*h2Conn)(nil)
