package identity

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/membrane-fw/membrane/policies"
)

// FileName is the store's file inside the state directory.
const FileName = "identities.json"

// maxAllocated is the last number the store hands out; CIDR identities of
// the compiler start above it.
const maxAllocated = policies.FirstCIDR - 1

// ErrExhausted means every allocatable number is in use.
var ErrExhausted = errors.New("identity: no free identity number (release unused label sets)")

// Identity is one allocated identity.
type Identity struct {
	ID     policies.Identity `json:"id"`
	Labels policies.Labels   `json:"labels"`
	// LastUsed is when the identity was last in use (zero while in use).
	LastUsed time.Time `json:"last_used,omitzero"`
	// InUse reports whether an endpoint holds it now.
	InUse bool `json:"-"`
}

// ReservedIdentity is one of the policy language's reserved identities.
type ReservedIdentity struct {
	ID   policies.Identity
	Name string
}

// Reserved lists the reserved identities.
func Reserved() []ReservedIdentity {
	return []ReservedIdentity{
		{policies.IdentityUnknown, "unknown"},
		{policies.IdentityHost, "host"},
		{policies.IdentityWorld, "world"},
		{policies.IdentityUnmanaged, "unmanaged"},
		{policies.IdentityInit, "init"},
	}
}

// Options tune a Store.
type Options struct {
	// Grace is how long an unused identity keeps its number.
	Grace time.Duration
	// Now is the clock (tests); time.Now when nil.
	Now func() time.Time
}

// Store is the persistent label-set -> identity mapping.
type Store struct {
	path  string
	grace time.Duration
	now   func() time.Time

	mu    sync.Mutex
	byKey map[string]*entry
	byID  map[policies.Identity]*entry
	next  policies.Identity
}

type entry struct {
	id     policies.Identity
	labels policies.Labels
	key    string
	inUse  bool
	// unusedSince is when the identity stopped being in use; the zero
	// time while it is in use.
	unusedSince time.Time
}

// fileFormat is the on-disk layout.
type fileFormat struct {
	Version    int        `json:"version"`
	Next       uint32     `json:"next"`
	Identities []Identity `json:"identities"`
}

// Open loads the store from dir (creating dir when needed). Identities read
// from disk start unused, with their grace period counted from now: the
// daemon's first reconcile marks the ones its endpoints still hold.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity store: %w", err)
	}
	s := &Store{
		path:  filepath.Join(dir, FileName),
		grace: opts.Grace,
		now:   opts.Now,
		byKey: map[string]*entry{},
		byID:  map[policies.Identity]*entry{},
		next:  policies.FirstAllocated,
	}
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("identity store: %w", err)
	}
	var f fileFormat
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("identity store %s is corrupt (%v); move it away to start with fresh identities", s.path, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("identity store %s has version %d, this membraned reads version 1", s.path, f.Version)
	}
	now := s.now()
	for _, id := range f.Identities {
		if id.ID < policies.FirstAllocated || id.ID > maxAllocated {
			return nil, fmt.Errorf("identity store %s: identity %d is outside the allocatable range", s.path, id.ID)
		}
		k := Key(id.Labels)
		if _, dup := s.byKey[k]; dup {
			return nil, fmt.Errorf("identity store %s: label set {%s} appears twice", s.path, k)
		}
		if _, dup := s.byID[id.ID]; dup {
			return nil, fmt.Errorf("identity store %s: identity %d appears twice", s.path, id.ID)
		}
		e := &entry{id: id.ID, labels: cloneLabels(id.Labels), key: k, unusedSince: now}
		s.byKey[k] = e
		s.byID[id.ID] = e
	}
	if n := policies.Identity(f.Next); n >= policies.FirstAllocated && n <= maxAllocated+1 {
		s.next = n
	}
	return s, nil
}

// Key is the canonical form of a label set: sorted "k"="v" pairs (Go-quoted)
// joined by commas. Two label sets have the same identity exactly when
// their keys are equal.
func Key(labels policies.Labels) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	// Keys and values are quoted: label values may hold ',' and '=' (and
	// keys '=', through the runtimes' APIs), and a plain k=v,k2=v2 would
	// give {app: "x", team: "web"} and {app: "x,team=web"} one key, so one
	// identity, whose rules the second set was never granted.
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Quote(k))
		b.WriteByte('=')
		b.WriteString(strconv.Quote(labels[k]))
	}
	return b.String()
}

// Allocate returns the identity of labels, allocating and persisting a new
// one when the set is new, and marks it in use.
func (s *Store) Allocate(labels policies.Labels) (policies.Identity, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := Key(labels)
	if e, ok := s.byKey[k]; ok {
		e.inUse = true
		e.unusedSince = time.Time{}
		return e.id, nil
	}
	id, err := s.freeNumber()
	if err != nil {
		return 0, err
	}
	e := &entry{id: id, labels: cloneLabels(labels), key: k, inUse: true}
	s.byKey[k] = e
	s.byID[id] = e
	s.next = id + 1
	if err := s.saveLocked(); err != nil {
		delete(s.byKey, k)
		delete(s.byID, id)
		return 0, err
	}
	return id, nil
}

func (s *Store) freeNumber() (policies.Identity, error) {
	n := s.next
	for range maxAllocated - policies.FirstAllocated + 1 {
		if n > maxAllocated {
			n = policies.FirstAllocated
		}
		if _, used := s.byID[n]; !used {
			return n, nil
		}
		n++
	}
	return 0, ErrExhausted
}

// SetInUse marks exactly the identities in inUse as used: every other
// identity starts (or continues) its grace period. The reconciler calls it
// with the identities of the current endpoints.
func (s *Store) SetInUse(inUse map[policies.Identity]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for id, e := range s.byID {
		if inUse[id] {
			e.inUse = true
			e.unusedSince = time.Time{}
		} else if e.inUse || e.unusedSince.IsZero() {
			e.inUse = false
			e.unusedSince = now
		}
	}
}

// Release drops the identities unused for longer than the grace period and
// returns them, so the caller can remove them from the datapath.
func (s *Store) Release() ([]policies.Identity, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var out []policies.Identity
	for id, e := range s.byID {
		if !e.inUse && now.Sub(e.unusedSince) >= s.grace {
			out = append(out, id)
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	removed := map[policies.Identity]*entry{}
	for _, id := range out {
		e := s.byID[id]
		removed[id] = e
		delete(s.byID, id)
		delete(s.byKey, e.key)
	}
	if err := s.saveLocked(); err != nil {
		for id, e := range removed {
			s.byID[id] = e
			s.byKey[e.key] = e
		}
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// Lookup returns the labels of id.
func (s *Store) Lookup(id policies.Identity) (policies.Labels, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.byID[id]
	if !ok {
		return nil, false
	}
	return cloneLabels(e.labels), true
}

// List returns every allocated identity, sorted by number.
func (s *Store) List() []Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Identity, 0, len(s.byID))
	for _, e := range s.byID {
		out = append(out, Identity{ID: e.id, Labels: cloneLabels(e.labels), LastUsed: e.unusedSince, InUse: e.inUse})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Len returns how many identities are allocated.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byID)
}

func (s *Store) saveLocked() error {
	f := fileFormat{Version: 1, Next: uint32(s.next)}
	for _, e := range s.byID {
		f.Identities = append(f.Identities, Identity{ID: e.id, Labels: e.labels, LastUsed: e.unusedSince})
	}
	sort.Slice(f.Identities, func(i, j int) bool { return f.Identities[i].ID < f.Identities[j].ID })
	data, err := json.MarshalIndent(&f, "", "  ")
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(s.path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("identity store: %w", err)
	}
	return nil
}

// WriteFileAtomic replaces path with data so that a crash at any moment
// leaves either the old or the new content: temporary file in the same
// directory, fsync, rename, fsync of the directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmpName, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func cloneLabels(l policies.Labels) policies.Labels {
	out := make(policies.Labels, len(l))
	for k, v := range l {
		out[k] = v
	}
	return out
}
