package packaging

import (
	"debug/elf"
	"fmt"
	"strconv"
	"strings"
)

// libcRequirement reads an ELF binary and says what it needs from the C
// library: static is true for a statically linked binary (Go without cgo);
// otherwise minGlibc is the newest GLIBC_x.y symbol version it imports,
// which is what dpkg-shlibdeps would put in Depends.
func libcRequirement(path string) (static bool, minGlibc string, err error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, "", fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	libs, err := f.ImportedLibraries()
	if err != nil {
		return false, "", fmt.Errorf("reading %s: %w", path, err)
	}
	if len(libs) == 0 {
		return true, "", nil
	}
	syms, err := f.ImportedSymbols()
	if err != nil {
		return false, "", fmt.Errorf("reading %s: %w", path, err)
	}
	best := [2]int{2, 2}
	for _, s := range syms {
		v, ok := strings.CutPrefix(s.Version, "GLIBC_")
		if !ok {
			continue
		}
		maj, min, _ := strings.Cut(v, ".")
		a, err1 := strconv.Atoi(maj)
		b, err2 := strconv.Atoi(strings.SplitN(min, ".", 2)[0])
		if err1 != nil || err2 != nil {
			continue
		}
		if a > best[0] || (a == best[0] && b > best[1]) {
			best = [2]int{a, b}
		}
	}
	return false, fmt.Sprintf("%d.%d", best[0], best[1]), nil
}

// newerGlibc returns the newer of two "x.y" versions ("" is oldest).
func newerGlibc(a, b string) string {
	if a == "" {
		return b
	}
	if b == "" {
		return a
	}
	pa, pb := strings.SplitN(a, ".", 2), strings.SplitN(b, ".", 2)
	ma, _ := strconv.Atoi(pa[0])
	mb, _ := strconv.Atoi(pb[0])
	na, _ := strconv.Atoi(pa[1])
	nb, _ := strconv.Atoi(pb[1])
	if ma > mb || (ma == mb && na > nb) {
		return a
	}
	return b
}
