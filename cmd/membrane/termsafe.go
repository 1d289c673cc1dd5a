package main

import (
	"fmt"
	"io"
	"unicode/utf8"
)

// termSafe is w for text that holds what others wrote: container names
// and labels (a Nomad job's author sets its task's labels, and is not root
// on the host), the hosts and paths of HTTP requests from anywhere. A
// control character in them would reach the terminal of whoever runs
// `membrane observe` or `endpoint list` and could move the cursor, rewrite
// what was printed, set the window title or the clipboard. Each is written
// escaped instead, as Go quotes it (\x1b, \u009b), and so is a byte that is
// not UTF-8 (a terminal in an 8-bit locale reads 0x9b as a control); line
// feeds and tabs, which the output itself uses, pass. JSON output needs
// none of this: encoding/json escapes C0 controls and replaces bytes that
// are not UTF-8.
func termSafe(w io.Writer) io.Writer { return &safeWriter{w: w} }

type safeWriter struct {
	w   io.Writer
	buf []byte
}

func (s *safeWriter) Write(p []byte) (int, error) {
	clean := true
	for _, c := range p {
		if c < ' ' && c != '\n' && c != '\t' || c >= 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return s.w.Write(p)
	}
	b := s.buf[:0]
	for i := 0; i < len(p); {
		r, n := utf8.DecodeRune(p[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b = fmt.Appendf(b, `\x%02x`, p[i])
		case r < ' ' && r != '\n' && r != '\t', r == 0x7f:
			b = fmt.Appendf(b, `\x%02x`, r)
		case r >= 0x80 && r <= 0x9f:
			b = fmt.Appendf(b, `\u%04x`, r)
		default:
			b = append(b, p[i:i+n]...)
		}
		i += n
	}
	s.buf = b
	if _, err := s.w.Write(b); err != nil {
		return 0, err
	}
	return len(p), nil
}
