package identity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/policies"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func open(t *testing.T, dir string, c *clock) *Store {
	t.Helper()
	s, err := Open(dir, Options{Grace: time.Minute, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSameLabelsSameIdentityAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: time.Unix(1000, 0)}
	s := open(t, dir, c)
	api, err := s.Allocate(policies.Labels{"app": "api", "env": "prod"})
	if err != nil {
		t.Fatal(err)
	}
	db, _ := s.Allocate(policies.Labels{"app": "db"})
	if api < policies.FirstAllocated || db == api {
		t.Fatalf("identities %d %d", api, db)
	}
	again, _ := s.Allocate(policies.Labels{"env": "prod", "app": "api"})
	if again != api {
		t.Fatalf("same label set got %d then %d", api, again)
	}

	s2 := open(t, dir, c) // "restart"
	if got, _ := s2.Allocate(policies.Labels{"app": "api", "env": "prod"}); got != api {
		t.Fatalf("after restart api got %d, want %d", got, api)
	}
	if got, _ := s2.Allocate(policies.Labels{"app": "db"}); got != db {
		t.Fatalf("after restart db got %d, want %d", got, db)
	}
	// A new set after the restart does not collide with the old numbers.
	n, _ := s2.Allocate(policies.Labels{"app": "new"})
	if n == api || n == db {
		t.Fatalf("new identity %d collides", n)
	}
}

func TestUnusedIdentityReleasedAfterGrace(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: time.Unix(1000, 0)}
	s := open(t, dir, c)
	a, _ := s.Allocate(policies.Labels{"app": "a"})
	b, _ := s.Allocate(policies.Labels{"app": "b"})
	s.SetInUse(map[policies.Identity]bool{a: true})

	c.t = c.t.Add(30 * time.Second)
	if rel, _ := s.Release(); len(rel) != 0 {
		t.Fatalf("released %v inside the grace period", rel)
	}
	c.t = c.t.Add(31 * time.Second)
	rel, err := s.Release()
	if err != nil {
		t.Fatal(err)
	}
	if len(rel) != 1 || rel[0] != b {
		t.Fatalf("released %v, want [%d]", rel, b)
	}
	if _, ok := s.Lookup(b); ok {
		t.Fatal("released identity still listed")
	}
	// The release is persisted.
	s2 := open(t, dir, c)
	if _, ok := s2.Lookup(b); ok {
		t.Fatal("released identity came back after restart")
	}
	if _, ok := s2.Lookup(a); !ok {
		t.Fatal("identity in use lost after restart")
	}
	// A released label set gets a fresh number, not its old one.
	nb, _ := s2.Allocate(policies.Labels{"app": "b"})
	if nb == b {
		t.Fatalf("released number %d reused at once", b)
	}
}

func TestReuseDuringGraceKeepsNumber(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	s := open(t, t.TempDir(), c)
	a, _ := s.Allocate(policies.Labels{"app": "a"})
	s.SetInUse(nil)
	c.t = c.t.Add(50 * time.Second)
	if again, _ := s.Allocate(policies.Labels{"app": "a"}); again != a {
		t.Fatalf("container restart inside grace got %d, want %d", again, a)
	}
	c.t = c.t.Add(time.Hour)
	if rel, _ := s.Release(); len(rel) != 0 {
		t.Fatalf("in-use identity released: %v", rel)
	}
}

func TestIdentitiesLoadedAfterRestartGetAGracePeriod(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: time.Unix(1000, 0)}
	s := open(t, dir, c)
	a, _ := s.Allocate(policies.Labels{"app": "a"})
	c.t = c.t.Add(time.Hour)
	s2 := open(t, dir, c)
	if rel, _ := s2.Release(); len(rel) != 0 {
		t.Fatalf("identity %d released right after restart: %v", a, rel)
	}
}

func TestCrashSafeWriteLeavesNoTempFiles(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: time.Unix(1000, 0)}
	s := open(t, dir, c)
	for i := range 20 {
		if _, err := s.Allocate(policies.Labels{"n": strings.Repeat("x", i)}); err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != FileName {
		t.Fatalf("state dir holds %v", ents)
	}
	st, _ := os.Stat(filepath.Join(dir, FileName))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	// A leftover temp file from a crash mid-write is ignored.
	os.WriteFile(filepath.Join(dir, "."+FileName+".tmp-123"), []byte("{garbage"), 0o600)
	if s2 := open(t, dir, c); s2.Len() != 20 {
		t.Fatalf("after crash leftovers: %d identities", s2.Len())
	}
}

func TestCorruptStoreIsAClearError(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, FileName), []byte("{not json"), 0o600)
	_, err := Open(dir, Options{})
	if err == nil || !strings.Contains(err.Error(), "corrupt") || !strings.Contains(err.Error(), "move it away") {
		t.Fatalf("want corrupt-store error, got %v", err)
	}
}

func TestReservedIdentitiesNeverAllocated(t *testing.T) {
	s := open(t, t.TempDir(), &clock{t: time.Unix(1, 0)})
	for i := range 50 {
		id, _ := s.Allocate(policies.Labels{"i": string(rune('a' + i))})
		for _, r := range Reserved() {
			if id == r.ID {
				t.Fatalf("allocated reserved %d", id)
			}
		}
		if id < policies.FirstAllocated || id >= policies.FirstCIDR {
			t.Fatalf("allocated %d outside range", id)
		}
	}
}

// Label values may hold ',' and '=' (and keys '=', through the runtimes'
// APIs): label sets that only print alike are different identities, so
// that no container can take another's identity (and its rules) with a
// crafted label, across a restart too.
func TestLabelSetsThatPrintAlikeGetDifferentIdentities(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: time.Unix(1000, 0)}
	s := open(t, dir, c)
	sets := []policies.Labels{
		{"app": "web", "team": "payments"},
		{"app": "web,team=payments"},
		{"app=web,team": "payments"},
		{"a": "b=c"},
		{"a=b": "c"},
		{"a": "", "b": ""},
		{"a": ",b="},
	}
	ids := map[policies.Identity]int{}
	for i, l := range sets {
		id, err := s.Allocate(l)
		if err != nil {
			t.Fatal(err)
		}
		if j, dup := ids[id]; dup {
			t.Fatalf("label sets %v and %v got the same identity %d", sets[j], l, id)
		}
		ids[id] = i
	}
	s2 := open(t, dir, c)
	for id, i := range ids {
		if got, _ := s2.Allocate(sets[i]); got != id {
			t.Errorf("after restart %v got %d, was %d", sets[i], got, id)
		}
	}
}
