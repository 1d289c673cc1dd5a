package policies

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Severity of a diagnostic: "error" rejects the set, "warning" does not.
const (
	SeverityError   = "error"
	SeverityWarning = "warning"
)

// Diagnostic is one problem found while loading a policy set. Pos is where
// it starts (file:line:col), End where it ends; a zero Line means the whole
// file (for example, a file that cannot be read).
type Diagnostic struct {
	Severity string
	Summary  string
	Detail   string
	Pos      Position
	End      Position
}

// String is the one-line form of the CLI contract: FILE:LINE:COL: SEVERITY: SUMMARY.
func (d Diagnostic) String() string {
	return printable(fmt.Sprintf("%s: %s: %s", d.Pos, d.Severity, d.Summary), false)
}

// printable is s with what a terminal would act on written as Go escapes it:
// control characters (\x1b, \u009b; \n too unless newlines is set; tabs
// pass) and bytes that are not UTF-8 (\x9b). File names and source lines are
// what others wrote: a newline in a file name would split the one-line
// FILE:LINE:COL form, and an escape sequence in a comment would reach the
// terminal of whoever checks the file (decision 92). JSON needs none of it.
func printable(s string, newlines bool) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' && (c != '\n' || !newlines) || c >= 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' && !newlines:
			b.WriteString(`\n`)
		case r < ' ' && r != '\t' && r != '\n', r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r >= 0x80 && r <= 0x9f:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// Report is everything Load found, in file order then position order, with
// the sources so that diagnostics can be printed with snippets.
type Report struct {
	Diagnostics []Diagnostic
	// Files are the policy files that were read, in load order.
	Files []string
	// Sources are those files' contents as they were parsed, in load
	// order: what a caller that keeps an accepted set (the daemon's last
	// good snapshot) must keep, since the files may have changed since.
	Sources []Source

	diags hcl.Diagnostics
	files map[string]*hcl.File
}

// HasErrors reports whether any diagnostic is an error.
func (r *Report) HasErrors() bool {
	if r == nil {
		return false
	}
	for _, d := range r.Diagnostics {
		if d.Severity == SeverityError {
			return true
		}
	}
	return false
}

// Errors returns the error diagnostics.
func (r *Report) Errors() []Diagnostic { return r.filter(SeverityError) }

// Warnings returns the warning diagnostics.
func (r *Report) Warnings() []Diagnostic { return r.filter(SeverityWarning) }

func (r *Report) filter(sev string) []Diagnostic {
	if r == nil {
		return nil
	}
	var out []Diagnostic
	for _, d := range r.Diagnostics {
		if d.Severity == sev {
			out = append(out, d)
		}
	}
	return out
}

// ErrInvalid is wrapped by Report.Err, so callers can tell a rejected policy
// set from other failures with errors.Is.
var ErrInvalid = errors.New("invalid policy set")

// invalidError lists every error of a rejected set, one per line.
type invalidError struct{ lines []string }

func (e *invalidError) Error() string { return strings.Join(e.lines, "\n") }
func (e *invalidError) Unwrap() error { return ErrInvalid }

// Err is nil when the set has no errors; otherwise an error (wrapping
// ErrInvalid) whose message holds every error as
// "FILE:LINE:COL: error: SUMMARY", one per line.
func (r *Report) Err() error {
	errs := r.Errors()
	if len(errs) == 0 {
		return nil
	}
	e := &invalidError{}
	for _, d := range errs {
		e.lines = append(e.lines, d.String())
	}
	return e
}

// WriteText prints the diagnostics the way HCL tools do: severity, summary,
// the source lines with the subject highlighted, and the detail. color adds
// VT100 escapes.
//
// It renders them itself, in the form of hcl.NewDiagnosticTextWriter, with
// two bounds that writer lacks: a source line longer than snippetMax
// bytes is shown as a window around the subject, cut with "...", and each
// line is found through an index of the file instead of a scan from its
// start. Without them a 20 KB line of 5,000 bad ports printed 100 MB (the
// whole line under every error), and a file of the 16 MiB limit would
// print and scan terabytes.
func (r *Report) WriteText(w io.Writer, color bool) error {
	if r == nil {
		return nil
	}
	files := make(map[string]*snippetFile, len(r.files))
	for _, d := range r.diags {
		if d.Subject == nil {
			continue
		}
		name := d.Subject.Filename
		if _, ok := files[name]; ok {
			continue
		}
		f := r.files[name]
		if f != nil && f.Nav == nil {
			// Parsed by the subset parser: HCL's parse of the same
			// bytes gives the same tree plus the navigation that
			// names the enclosing block above each snippet.
			if hf, _ := hclsyntax.ParseConfig(f.Bytes, name, hcl.InitialPos); hf != nil {
				f = hf
			}
		}
		files[name] = newSnippetFile(f)
	}
	bw := bufio.NewWriter(w)
	for _, d := range r.diags {
		var f *snippetFile
		if d.Subject != nil {
			f = files[d.Subject.Filename]
		}
		writeDiagnostic(bw, d, f, color)
	}
	return bw.Flush()
}

// snippetMax is the longest source line WriteText shows whole.
const snippetMax = 240

// snippetFile is a source file with the offsets of its line starts.
type snippetFile struct {
	src   []byte
	nav   any
	lines []int // byte offset where each line starts
}

func newSnippetFile(f *hcl.File) *snippetFile {
	if f == nil || f.Bytes == nil {
		return nil
	}
	sf := &snippetFile{src: f.Bytes, nav: f.Nav, lines: []int{0}}
	for i, c := range f.Bytes {
		if c == '\n' {
			sf.lines = append(sf.lines, i+1)
		}
	}
	return sf
}

// line is line n (1-based) without its line break (and a '\r' before it,
// as bufio.ScanLines drops), and the offset where it starts.
func (f *snippetFile) line(n int) ([]byte, int, bool) {
	if n < 1 || n > len(f.lines) {
		return nil, 0, false
	}
	start, end := f.lines[n-1], len(f.src)
	if n < len(f.lines) {
		end = f.lines[n] - 1
	}
	if n == len(f.lines) && start == end {
		return nil, 0, false // after the last line break: no line
	}
	b := f.src[start:end]
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	return b, start, true
}

func (f *snippetFile) context(offset int) string {
	if cs, ok := f.nav.(interface{ ContextString(int) string }); ok {
		return cs.ContextString(offset)
	}
	return ""
}

func writeDiagnostic(w *bufio.Writer, d *hcl.Diagnostic, f *snippetFile, color bool) {
	var colorCode, highlightCode, resetCode string
	if color {
		switch d.Severity {
		case hcl.DiagError:
			colorCode = "\x1b[31m"
		case hcl.DiagWarning:
			colorCode = "\x1b[33m"
		}
		resetCode = "\x1b[0m"
		highlightCode = "\x1b[1;4m"
	}
	sev := "Warning"
	if d.Severity == hcl.DiagError {
		sev = "Error"
	}
	fmt.Fprintf(w, "%s%s%s: %s\n\n", colorCode, sev, resetCode, printable(d.Summary, false))
	file := ""
	if d.Subject != nil {
		file = printable(d.Subject.Filename, false)
	}
	if d.Subject != nil {
		snip, hl := *d.Subject, *d.Subject
		if d.Context != nil {
			snip = hcl.RangeOver(snip, *d.Context)
		}
		// An empty range is shown as one character, as HCL does.
		if snip.Empty() {
			snip.End.Byte++
		}
		if hl.Empty() {
			hl.End.Byte++
		}
		if f == nil {
			fmt.Fprintf(w, "  on %s line %d:\n  (source code not available)\n\n", file, d.Subject.Start.Line)
		} else {
			ctx := f.context(d.Subject.Start.Byte)
			if ctx != "" {
				ctx = ", in " + printable(ctx, false)
			}
			fmt.Fprintf(w, "  on %s line %d%s:\n", file, d.Subject.Start.Line, ctx)
			// The lines that overlap the snippet's range as HCL's
			// Range.Overlaps has it: an empty line never does, and the
			// range's end counts as inside it.
			s, e := snip.Start.Byte, snip.End.Byte
			in := func(off, lo, hi int) bool { return off >= lo && off < hi }
			for n := sort.SearchInts(f.lines, s+1); ; n++ {
				b, start, ok := f.line(n)
				if !ok || start > e {
					break
				}
				end := start + len(b)
				if len(b) > 0 && e > s && (in(s, start, end) || in(e, start, end) || in(start, s, e) || in(end, s, e)) {
					writeSnippetLine(w, n, b, start, hl, highlightCode, resetCode)
				}
			}
			w.WriteByte('\n')
		}
	}
	if d.Detail != "" {
		fmt.Fprintf(w, "%s\n\n", printable(d.Detail, true))
	}
}

// writeSnippetLine writes line n (b, starting at offset start) with the
// part inside hl highlighted; a line over snippetMax bytes as a window
// around that part.
func writeSnippetLine(w *bufio.Writer, n int, b []byte, start int, hl hcl.Range, on, off string) {
	hs, he := clamp(hl.Start.Byte-start, 0, len(b)), clamp(hl.End.Byte-start, 0, len(b))
	if he <= hs {
		hs, he = len(b), len(b) // no part of this line is highlighted
	}
	before, mid, after := b[:hs], b[hs:he], b[he:]
	var pre, post, cut string
	if len(b) > snippetMax {
		const side = 80
		if len(before) > side {
			j := len(before) - side
			for j < len(before) && !utf8.RuneStart(before[j]) {
				j++
			}
			before, pre = before[j:], "..."
		}
		if len(mid) > side {
			mid, cut = headRunes(mid, side), "..."
		}
		if len(after) > side {
			after, post = headRunes(after, side), "..."
		}
	}
	p := func(b []byte) string { return printable(string(b), false) }
	if len(mid) == 0 && cut == "" {
		fmt.Fprintf(w, "%4d: %s%s%s%s\n", n, pre, p(before), p(after), post)
		return
	}
	fmt.Fprintf(w, "%4d: %s%s%s%s%s%s%s%s\n", n, pre, p(before), on, p(mid), cut, off, p(after), post)
}

// headRunes is the first n bytes of b, or fewer so as not to cut a
// character in two.
func headRunes(b []byte, n int) []byte {
	for n > 0 && n < len(b) && !utf8.RuneStart(b[n]) {
		n--
	}
	return b[:n]
}

func clamp(v, lo, hi int) int { return min(max(v, lo), hi) }

// jsonDiagnostic is the CLI contract's JSON form of a diagnostic.
type jsonDiagnostic struct {
	File     string `json:"file"`
	Line     int    `json:"line"`
	Column   int    `json:"column"`
	Severity string `json:"severity"`
	Summary  string `json:"summary"`
	Detail   string `json:"detail"`
}

// JSON renders the diagnostics as one JSON array of objects with file, line,
// column, severity, summary and detail ("[]" when there are none).
func (r *Report) JSON() ([]byte, error) {
	out := []jsonDiagnostic{}
	if r != nil {
		for _, d := range r.Diagnostics {
			out = append(out, jsonDiagnostic{
				File: d.Pos.File, Line: d.Pos.Line, Column: d.Pos.Column,
				Severity: d.Severity, Summary: d.Summary, Detail: d.Detail,
			})
		}
	}
	return json.MarshalIndent(out, "", "  ")
}

// finish sorts the HCL diagnostics into file order then position order and
// fills the exported Diagnostics from them.
func (r *Report) finish(fileOrder map[string]int) {
	key := func(d *hcl.Diagnostic) (int, int) {
		if d.Subject == nil {
			if f, ok := d.Extra.(wholeFile); ok {
				if idx, ok := fileOrder[string(f)]; ok {
					return idx, -1
				}
				return len(fileOrder), -1
			}
			return len(fileOrder) + 1, 0
		}
		idx, ok := fileOrder[d.Subject.Filename]
		if !ok {
			idx = len(fileOrder)
		}
		return idx, d.Subject.Start.Byte
	}
	sort.SliceStable(r.diags, func(i, j int) bool {
		fi, bi := key(r.diags[i])
		fj, bj := key(r.diags[j])
		if fi != fj {
			return fi < fj
		}
		return bi < bj
	})
	r.Diagnostics = r.Diagnostics[:0]
	for _, d := range r.diags {
		r.Diagnostics = append(r.Diagnostics, toDiagnostic(d))
	}
}

func toDiagnostic(d *hcl.Diagnostic) Diagnostic {
	out := Diagnostic{Severity: SeverityError, Summary: d.Summary, Detail: d.Detail}
	if d.Severity == hcl.DiagWarning {
		out.Severity = SeverityWarning
	}
	if f, ok := d.Extra.(wholeFile); ok {
		out.Pos.File, out.End.File = string(f), string(f)
	}
	if d.Subject != nil {
		out.Pos = hclPos(d.Subject.Filename, d.Subject.Start)
		out.End = hclPos(d.Subject.Filename, d.Subject.End)
	}
	return out
}

func hclPos(file string, p hcl.Pos) Position {
	return Position{File: file, Line: p.Line, Column: p.Column}
}
