package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/membrane-fw/membrane/policies"
)

// EventType is the kind of a ring-buffer record.
type EventType uint8

const (
	EventDrop     EventType = 1
	EventAudit    EventType = 2 // would have been dropped, passed in audit mode
	EventAllow    EventType = 3 // sampled new allowed flow (Config.AllowSample)
	EventRedirect EventType = 4 // new flow allowed with a proxy port
)

func (t EventType) String() string {
	switch t {
	case EventDrop:
		return "drop"
	case EventAudit:
		return "audit"
	case EventAllow:
		return "allow"
	case EventRedirect:
		return "redirect"
	}
	return fmt.Sprintf("event-%d", uint8(t))
}

// Event is one decoded record.
type Event struct {
	Time           time.Time // approximate wall-clock time of the packet
	Type           EventType
	Reason         Reason
	Direction      policies.Direction
	Ifindex        int
	EndpointID     uint32
	LocalIdentity  policies.Identity
	RemoteIdentity policies.Identity
	RuleID         uint32 // the policy rule that decided, 0 for none
	Proto          policies.Proto
	Src, Dst       netip.AddrPort // ports are 0 where the protocol has none; ICMP echo: id
	ProxyPort      uint16
	Len            uint32
	Revalidated    bool // an established flow re-judged after a policy change
	FromProxy      bool // remote identity came from the proxy's mark
	Fragment       bool // a later fragment
}

// EventReader reads the events ring buffer.
type EventReader struct {
	r *ringbuf.Reader
}

// NewEventReader opens a reader on the events ring buffer. Only one reader
// should consume it at a time.
func (d *Datapath) NewEventReader() (*EventReader, error) {
	r, err := ringbuf.NewReader(d.objs.MembraneEvents)
	if err != nil {
		return nil, fmt.Errorf("opening events ring buffer: %w", err)
	}
	return &EventReader{r: r}, nil
}

// ErrTimeout is returned by Read when its deadline passes without a record.
var ErrTimeout = os.ErrDeadlineExceeded

// SetDeadline makes Read return ErrTimeout after t (zero: no deadline).
func (e *EventReader) SetDeadline(t time.Time) { e.r.SetDeadline(t) }

// Read blocks until a record arrives, the deadline passes or Close is called
// (then it returns an error wrapping os.ErrClosed).
func (e *EventReader) Read() (Event, error) {
	rec, err := e.r.Read()
	if err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return Event{}, fmt.Errorf("event reader: %w", os.ErrClosed)
		}
		return Event{}, err
	}
	return decodeEvent(rec.RawSample)
}

// Events delivers decoded records to fn until ctx is cancelled (then it
// returns nil) or reading fails. A record that does not decode is skipped.
func (d *Datapath) Events(ctx context.Context, fn func(Event)) error {
	r, err := d.NewEventReader()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { r.Close() })
	defer stop()
	defer r.Close()
	for {
		ev, err := r.Read()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			var de *decodeError
			if errors.As(err, &de) {
				continue
			}
			return err
		}
		fn(ev)
	}
}

type decodeError struct{ err error }

func (e *decodeError) Error() string { return e.err.Error() }
func (e *decodeError) Unwrap() error { return e.err }

// Close stops the reader; a blocked Read returns.
func (e *EventReader) Close() error { return e.r.Close() }

func decodeEvent(raw []byte) (Event, error) {
	var r datapathEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &r); err != nil {
		return Event{}, &decodeError{fmt.Errorf("decoding event (%d bytes): %w", len(raw), err)}
	}
	ev := Event{
		Time:           wallClock(r.Timestamp),
		Type:           EventType(r.Type),
		Reason:         Reason(r.Reason),
		Direction:      policies.Direction(r.Direction),
		Ifindex:        int(r.Ifindex),
		EndpointID:     r.EndpointId,
		LocalIdentity:  policies.Identity(r.LocalIdentity),
		RemoteIdentity: policies.Identity(r.RemoteIdentity),
		RuleID:         r.RuleId,
		Proto:          policies.Proto(r.Protocol),
		ProxyPort:      r.ProxyPort,
		Len:            r.Len,
		Revalidated:    r.Flags&1 != 0,
		FromProxy:      r.Flags&2 != 0,
		Fragment:       r.Flags&4 != 0,
	}
	switch r.Family {
	case 4:
		ev.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(r.Saddr[:4])), r.Sport)
		ev.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(r.Daddr[:4])), r.Dport)
	case 6:
		ev.Src = netip.AddrPortFrom(netip.AddrFrom16(r.Saddr), r.Sport)
		ev.Dst = netip.AddrPortFrom(netip.AddrFrom16(r.Daddr), r.Dport)
	}
	return ev, nil
}

func wallClock(mono uint64) time.Time {
	now := time.Now()
	return now.Add(-time.Duration(int64(monotonic(now)) - int64(mono)))
}
