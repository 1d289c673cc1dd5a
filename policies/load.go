package policies

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/membrane-fw/membrane/internal/hcldepth"
	"github.com/membrane-fw/membrane/internal/hcltext"
)

// Source is one policy file's name and content, for callers that hold the
// bytes already (tests, fuzzing, an API upload).
type Source struct {
	Name  string
	Bytes []byte
}

// maxFileSize bounds one policy file; a policy directory is hand-written
// text, and a runaway file should be an error, not an out-of-memory.
const maxFileSize = 16 << 20

// Load reads a policy set from files and directories and validates it. A
// directory contributes its *.hcl files in lexical order of file name;
// other files, hidden files (".x.hcl") and subdirectories are ignored. Paths
// are read in the order given, each file once. The Set is nil whenever the
// report holds an error: a policy set is accepted or rejected as a whole.
// The report is never nil.
func Load(paths ...string) (*Set, *Report) {
	return LoadWithNetworks(nil, paths...)
}

// ContainerNetwork is the subnet of a container network that the caller
// can see, such as a Docker bridge's, for LoadWithNetworks.
type ContainerNetwork struct {
	Name   string // the bridge, say
	Prefix netip.Prefix
}

// HostAddr is an address of the host and the interface that holds it.
type HostAddr struct {
	Name string // the interface
	Addr netip.Addr
}

// LoadWithNetworks is Load that also warns at every CIDR of a peer
// attribute (from_cidr, to_cidr) that overlaps one of nets: CIDR rules
// match only peers that are not managed endpoints, so such a CIDR does not
// reach the containers on that network. A default route (0.0.0.0/0, ::/0)
// overlaps every network and is not reported.
func LoadWithNetworks(nets []ContainerNetwork, paths ...string) (*Set, *Report) {
	return LoadForCheck(CheckEnv{Networks: nets}, paths...)
}

// CheckEnv is what `policy check` knows beyond the files, for warnings
// that the daemon's loading does not give.
type CheckEnv struct {
	// Networks: see LoadWithNetworks.
	Networks []ContainerNetwork
	// HostAddrs are the addresses of this host's interfaces (loopback and
	// link-local ones aside). A CIDR that is one of them names the host,
	// which CIDR rules never match: it gets a warning that says so.
	HostAddrs []HostAddr
	// Uncounted reports whether a label key does not count for identity
	// and selection (the daemon's default label filter); a selector
	// requirement on such a key gets a warning, since it never holds
	// (k=v, k in (...), k) or always holds (k!=v, k notin (...), !k).
	Uncounted func(key string) bool
}

// LoadForCheck is Load with the warnings that env makes possible.
func LoadForCheck(env CheckEnv, paths ...string) (*Set, *Report) {
	var (
		srcs     []Source
		readErrs hcl.Diagnostics
		seen     = map[string]bool{}
	)
	add := func(path string) {
		key := path
		if abs, err := filepath.Abs(path); err == nil {
			key = abs
		}
		if seen[key] {
			return
		}
		seen[key] = true
		b, err := readPolicyFile(path)
		if err != nil {
			summary, detail := "Cannot read policy file: "+reason(err), err.Error()
			if target, lerr := os.Readlink(path); lerr == nil {
				summary = fmt.Sprintf("Cannot read policy file: it links to %s: %s", target, reason(err))
				detail = fmt.Sprintf("%s is a symbolic link to %s, which cannot be read (%v). Restore the link's target, or remove the link to drop its policies.", path, target, reason(err))
			}
			readErrs = append(readErrs, fileDiag(path, summary, detail))
			return
		}
		srcs = append(srcs, Source{Name: path, Bytes: b})
	}
	for _, p := range paths {
		files, err := ListDir(p)
		switch {
		case err == nil:
			for _, f := range files {
				add(f)
			}
		case errors.Is(err, errNotDir):
			add(p)
		case isLink(p):
			add(p) // a broken link: add names its target
		default:
			readErrs = append(readErrs, fileDiag(p, "Cannot read policy path: "+reason(err), err.Error()))
		}
	}
	set, rep := parse(env, srcs...)
	if len(readErrs) > 0 {
		rep.diags = append(rep.diags, readErrs...)
		rep.finish(rep.fileOrder())
		set = nil
	}
	return set, rep
}

var errNotDir = errors.New("not a directory")

func isLink(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode()&fs.ModeSymlink != 0
}

// reason is the short cause of a file system error ("no such file or
// directory"), for a one-line summary that already names the file.
func reason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// ListDir returns the policy files of directory dir, as Load reads them:
// the *.hcl regular files (symlinks followed), not hidden, in lexical order
// of file name. A *.hcl symlink whose target cannot be reached is listed
// too, so that Load reports it. It returns an error wrapping errNotDir
// when dir is a file.
func ListDir(dir string) ([]string, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s: %w", dir, errNotDir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".hcl") {
			continue
		}
		p := filepath.Join(dir, name)
		if !e.Type().IsRegular() {
			fi, err := os.Stat(p)
			if err != nil && e.Type()&fs.ModeSymlink != 0 {
				// A link whose target cannot be reached (gone, not
				// mounted yet, a loop) names a policy file that cannot be
				// read: Load reports it, and the set is rejected instead
				// of being loaded without that file's policies.
				out = append(out, p)
				continue
			}
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
		}
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

func readPolicyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return nil, fmt.Errorf("%s is a directory", path)
	}
	if st.Size() > maxFileSize {
		return nil, fmt.Errorf("%s is %d bytes; policy files are limited to %d", path, st.Size(), maxFileSize)
	}
	// Read from the file already open, into a buffer of the size just
	// seen (plus one byte, to find EOF without growing).
	b := make([]byte, 0, st.Size()+1)
	for {
		n, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
		if len(b) == cap(b) {
			if len(b) > maxFileSize {
				return nil, fmt.Errorf("%s is over %d bytes; policy files are limited to %d", path, maxFileSize, maxFileSize)
			}
			b = append(b, 0)[:len(b)] // grew while being read
		}
	}
}

// fileDiag is an error about a whole file, reported at its 1:1.
func fileDiag(path, summary, detail string) *hcl.Diagnostic {
	// At 1:1: the CLI contract gives every diagnostic a line and column.
	at := hcl.Pos{Line: 1, Column: 1}
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   detail,
		Subject:  &hcl.Range{Filename: path, Start: at, End: at},
		Extra:    wholeFile(path),
	}
}

// wholeFile marks a diagnostic without a subject as being about one file.
type wholeFile string

// Parse validates a policy set given as sources, in the given order (which
// is the order of rule IDs). Like Load, the Set is nil when the report holds
// an error.
func Parse(sources ...Source) (*Set, *Report) {
	return parse(CheckEnv{}, sources...)
}

func parse(env CheckEnv, sources ...Source) (*Set, *Report) {
	l := &loader{
		files: map[string]*hcl.File{},
		names: map[string]*Policy{},
		rep:   &Report{},
		res:   map[string]*regexp.Regexp{},
		check: env,
	}
	seen := map[string]bool{}
	for _, s := range sources {
		if seen[s.Name] {
			l.diags = append(l.diags, fileDiag(s.Name, "Policy file given twice", "Each file is read once per set."))
			continue
		}
		seen[s.Name] = true
		l.rep.Files = append(l.rep.Files, s.Name)
		l.rep.Sources = append(l.rep.Sources, s)
		f, d := parseFile(s.Bytes, s.Name)
		l.files[s.Name] = f
		l.diags = append(l.diags, d...)
		if d.HasErrors() || f == nil {
			// A file that does not parse gives only its syntax errors:
			// validating a half-parsed body would pile guesses on them.
			continue
		}
		l.file(f)
	}
	l.rep.diags = l.diags
	l.rep.files = l.files
	l.rep.finish(l.rep.fileOrder())
	if l.rep.HasErrors() {
		return nil, l.rep
	}
	return &l.set, l.rep
}

// parseFile parses one policy file: with the subset parser when the file
// stays in its subset (the usual case, and several times faster), else with
// HCL's own parser, which gives the syntax diagnostics. A subset-parsed file
// has no Nav (hclsyntax's is unexported); Report.WriteText re-parses such a
// file with HCL when it prints a snippet from it.
func parseFile(src []byte, name string) (*hcl.File, hcl.Diagnostics) {
	if d := hcltext.Check(src, name); d != nil {
		return nil, hcl.Diagnostics{d}
	}
	if body, ok := fastParse(src, name); ok {
		return &hcl.File{Body: body, Bytes: src}, nil
	}
	if d := hcldepth.Check(src, name); d != nil {
		return nil, hcl.Diagnostics{d}
	}
	return hclsyntax.ParseConfig(src, name, hcl.InitialPos)
}

func (r *Report) fileOrder() map[string]int {
	m := make(map[string]int, len(r.Files))
	for i, f := range r.Files {
		if _, ok := m[f]; !ok {
			m[f] = i
		}
	}
	return m
}
