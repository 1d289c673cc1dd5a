package bpf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf/btf"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// TestGoMirrorsMatchC checks every mirrored struct's size against the BTF of
// the compiled object, so C and Go never drift.
func TestGoMirrorsMatchC(t *testing.T) {
	spec, err := loadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	for name, size := range map[string]uintptr{
		"endpoint_info": unsafe.Sizeof(datapathEndpointInfo{}),
		"ipcache_key":   unsafe.Sizeof(datapathIpcacheKey{}),
		"ipcache_value": unsafe.Sizeof(datapathIpcacheValue{}),
		"policy_key":    unsafe.Sizeof(datapathPolicyKey{}),
		"policy_value":  unsafe.Sizeof(datapathPolicyValue{}),
		"ct_key":        unsafe.Sizeof(datapathCtKey{}),
		"ct_entry":      unsafe.Sizeof(datapathCtEntry{}),
		"frag_key":      unsafe.Sizeof(datapathFragKey{}),
		"frag_value":    unsafe.Sizeof(datapathFragValue{}),
		"config":        unsafe.Sizeof(datapathConfig{}),
		"counter":       unsafe.Sizeof(datapathCounter{}),
		"event":         unsafe.Sizeof(datapathEvent{}),
	} {
		var s *btf.Struct
		if err := spec.Types.TypeByName(name, &s); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if uintptr(s.Size) != size {
			t.Errorf("struct %s: C %d bytes, Go %d", name, s.Size, size)
		}
	}
	if unsafe.Sizeof(datapathPolicyKey{}) != 12 || unsafe.Sizeof(datapathCtKey{}) != 44 {
		t.Errorf("documented key sizes changed; update doc.go")
	}
	if n := spec.Maps["membrane_endpoints_fast"].MaxEntries; n != epFastSlots {
		t.Errorf("membrane_endpoints_fast has %d slots, epFastSlots %d: keep equal to EP_FAST_SLOTS", n, epFastSlots)
	}
	if ABI != 4 {
		t.Errorf("ABI %d: keep equal to MEMBRANE_ABI in include/membrane.h", ABI)
	}
}

// TestGeneratedFilesInSync regenerates the object and Go bindings into a temp
// dir with the same command as gen.go and fails on any difference.
func TestGeneratedFilesInSync(t *testing.T) {
	checkGenerated(t, "gen.go", "datapath")
}

// checkGenerated runs the bpf2go command of genFile's go:generate line into a
// temp dir and fails on any difference from the committed <stem>_bpfel.go
// and <stem>_bpfel.o.
func checkGenerated(t *testing.T, genFile, stem string) {
	t.Helper()
	testenv.RequireBinary(t, "clang")
	src, err := os.ReadFile(genFile)
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, line := range bytes.Split(src, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("//go:generate go tool bpf2go ")); ok {
			args = strings.Fields(string(rest))
		}
	}
	if len(args) == 0 {
		t.Fatalf("no go:generate line in %s", genFile)
	}
	tmp := t.TempDir()
	cmd := exec.Command("go", append([]string{"tool", "bpf2go", "-output-dir", tmp}, args...)...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=bpf")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bpf2go: %v\n%s", err, out)
	}
	for _, f := range []string{stem + "_bpfel.go", stem + "_bpfel.o"} {
		want, err := os.ReadFile(filepath.Join(tmp, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is out of date: run `make generate` and commit the result", f)
		}
	}
}
