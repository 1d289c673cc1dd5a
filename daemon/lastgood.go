package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/membrane-fw/membrane/daemon/identity"
	"github.com/membrane-fw/membrane/policies"
)

// lastGoodFile keeps the sources of the last policy set membraned accepted,
// in the state directory. A daemon that starts while the policy directory
// holds an invalid set enforces this one instead of nothing: "the last good
// set stays enforced" holds across restarts too.
const lastGoodFile = "last-good-policies.json"

type lastGood struct {
	Saved time.Time    `json:"saved"`
	Files []sourceFile `json:"files"`
}

type sourceFile struct {
	Name    string `json:"name"`
	Content string `json:"content"`
}

// lastGoodStore writes snapshots off the reconcile loop, newest wins.
type lastGoodStore struct {
	path string
	mu   sync.Mutex
	gen  uint64
	// beforeSave (tests) runs first in the saving goroutine.
	beforeSave func()
}

func newLastGoodStore(stateDir string) *lastGoodStore {
	return &lastGoodStore{path: filepath.Join(stateDir, lastGoodFile)}
}

// save snapshots srcs, the sources of the set just accepted, as they were
// parsed (policies.Report.Sources), in the background: the encoding and
// the write stay off the reconcile loop, and the files are not read
// again, so a file that changed since (even into something invalid) does
// not change the snapshot. When a newer set was accepted meanwhile, its
// save wins.
func (s *lastGoodStore) save(srcs []policies.Source, onErr func(error)) {
	s.mu.Lock()
	s.gen++
	gen := s.gen
	s.mu.Unlock()
	lg := lastGood{Saved: time.Now(), Files: make([]sourceFile, 0, len(srcs))}
	for _, src := range srcs {
		lg.Files = append(lg.Files, sourceFile{Name: src.Name, Content: string(src.Bytes)})
	}
	go func() {
		if s.beforeSave != nil {
			s.beforeSave()
		}
		data, err := json.Marshal(&lg)
		if err != nil {
			onErr(err)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if gen != s.gen {
			return // a newer set was accepted meanwhile
		}
		if err := identity.WriteFileAtomic(s.path, data, 0o600); err != nil {
			onErr(err)
		}
	}()
}

// load returns the last good set, or nil when none was saved.
func (s *lastGoodStore) load() (*policies.Set, []string, time.Time, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, time.Time{}, nil
	}
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	var lg lastGood
	if err := json.Unmarshal(data, &lg); err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("%s is corrupt: %w", s.path, err)
	}
	var srcs []policies.Source
	var names []string
	for _, f := range lg.Files {
		srcs = append(srcs, policies.Source{Name: f.Name, Bytes: []byte(f.Content)})
		names = append(names, f.Name)
	}
	set, rep := policies.Parse(srcs...)
	if rep.HasErrors() {
		return nil, nil, time.Time{}, fmt.Errorf("%s does not parse any more: %w", s.path, rep.Err())
	}
	return set, names, lg.Saved, nil
}
