package builtin

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
)

// Copying bodies by their framing, between a source reader and a
// destination writer. Each copy flushes the destination whenever the source
// would have to wait for the network, so a stream flows while bytes already
// at hand leave together. Errors reading the source are readErr; errors
// writing the destination are returned as they are.

// copyN copies n bytes from src to dst, flushing dst whenever src would
// have to wait for the network, so a stream flows while bytes already at
// hand leave together.
func copyN(dst *bufio.Writer, src *bufio.Reader, n int64, buf []byte) error {
	for n > 0 {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return err
			}
		}
		m := int64(len(buf))
		if n < m {
			m = n
		}
		k, err := src.Read(buf[:m])
		if k > 0 {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return werr
			}
			n -= int64(k)
		}
		if err != nil && n > 0 {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return readErr{err: err}
		}
	}
	return nil
}

// copyChunked copies a chunked body from src to dst, re-chunked (chunk
// extensions dropped) when rechunk, else decoded. The trailer section is
// checked and copied when rechunk and trailers, else dropped: a request's
// trailers never reach the upstream (writeRequest), as Envoy's HTTP/1
// codec drops them, since servers that merge them into the header section
// would read fields the rules never judged. line is scratch space.
func copyChunked(dst *bufio.Writer, src *bufio.Reader, buf []byte, line *[]byte, rechunk, trailers bool) error {
	for {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return err
			}
		}
		var l span
		var err error
		*line, l, err = readLine(src, (*line)[:0], maxLineBytes)
		if err != nil {
			return chunkReadErr(err)
		}
		n, ok := parseChunkSize(l.of(*line))
		if !ok {
			return readErr{err: errMalformedChunk}
		}
		if n == 0 {
			if rechunk {
				dst.WriteString("0\r\n")
			}
			// Trailer fields, then the empty line.
			total := 0
			for {
				*line, l, err = readLine(src, (*line)[:0], maxLineBytes)
				if err != nil {
					return chunkReadErr(err)
				}
				if l.empty() {
					break
				}
				if total += l.e - l.s; total > maxTrailerBytes {
					return readErr{err: errMalformedChunk}
				}
				if _, ok := parseField(*line, l); !ok {
					return readErr{err: errMalformedChunk}
				}
				if rechunk && trailers {
					dst.Write(l.of(*line))
					dst.WriteString("\r\n")
				}
			}
			if rechunk {
				dst.WriteString("\r\n")
			}
			return nil
		}
		if rechunk {
			dst.Write(strconv.AppendInt(dst.AvailableBuffer(), n, 16))
			dst.WriteString("\r\n")
		}
		if err := copyN(dst, src, n, buf); err != nil {
			return err
		}
		*line, l, err = readLine(src, (*line)[:0], maxLineBytes)
		if err != nil {
			return chunkReadErr(err)
		}
		if !l.empty() {
			return readErr{err: errMalformedChunk}
		}
		if rechunk {
			if _, err := dst.WriteString("\r\n"); err != nil {
				return err
			}
		}
	}
}

func chunkReadErr(err error) error {
	switch err {
	case errHeadTooLarge:
		err = fmt.Errorf("%w: %w", errMalformedChunk, errLineTooLong)
	case io.EOF:
		err = io.ErrUnexpectedEOF
	}
	return readErr{err: err}
}

// copyUntilEOF copies src to dst until src ends, as chunks when chunk.
func copyUntilEOF(dst *bufio.Writer, src *bufio.Reader, buf []byte, chunk bool) error {
	for {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return err
			}
		}
		k, err := src.Read(buf)
		if k > 0 {
			if chunk {
				dst.Write(strconv.AppendInt(dst.AvailableBuffer(), int64(k), 16))
				dst.WriteString("\r\n")
			}
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return werr
			}
			if chunk {
				dst.WriteString("\r\n")
			}
		}
		if err == io.EOF {
			if chunk {
				_, err := dst.WriteString("0\r\n\r\n")
				return err
			}
			return nil
		}
		if err != nil {
			return readErr{err: err}
		}
	}
}
