package policies

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

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
	return fmt.Sprintf("%s: %s: %s", d.Pos, d.Severity, d.Summary)
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
func (r *Report) WriteText(w io.Writer, color bool) error {
	if r == nil {
		return nil
	}
	files := make(map[string]*hcl.File, len(r.files))
	for name, f := range r.files {
		if f != nil && f.Nav == nil {
			// Parsed by the subset parser: HCL's parse of the same
			// bytes gives the same tree plus the navigation that
			// names the enclosing block above each snippet.
			if hf, _ := hclsyntax.ParseConfig(f.Bytes, name, hcl.InitialPos); hf != nil {
				f = hf
			}
		}
		files[name] = f
	}
	wr := hcl.NewDiagnosticTextWriter(w, files, 0, color)
	return wr.WriteDiagnostics(r.diags)
}

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
