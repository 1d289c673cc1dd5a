package policies

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// SelectorError is a malformed selector or label list. Offset is the byte
// offset inside the parsed string where the problem is, so that the loader
// can point at the right column of the policy file.
type SelectorError struct {
	Offset int
	Msg    string
}

func (e *SelectorError) Error() string {
	return fmt.Sprintf("at offset %d: %s", e.Offset, e.Msg)
}

// isLabelChar reports whether c may appear in a label key or value: the
// policy language allows letters, digits, '.', '-', '_' and '/'.
func isLabelChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '-' || c == '_' || c == '/'
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// selectorScanner walks a selector string byte by byte; the grammar is small
// enough that a hand-written scanner gives better error offsets than a lexer.
type selectorScanner struct {
	s   string
	pos int
}

func (sc *selectorScanner) skipSpace() {
	for sc.pos < len(sc.s) && isSpace(sc.s[sc.pos]) {
		sc.pos++
	}
}

func (sc *selectorScanner) eof() bool { return sc.pos >= len(sc.s) }

func (sc *selectorScanner) peek() byte {
	if sc.eof() {
		return 0
	}
	return sc.s[sc.pos]
}

func (sc *selectorScanner) word() string {
	start := sc.pos
	for sc.pos < len(sc.s) && isLabelChar(sc.s[sc.pos]) {
		sc.pos++
	}
	return sc.s[start:sc.pos]
}

func (sc *selectorScanner) errf(off int, format string, args ...any) *SelectorError {
	return &SelectorError{Offset: off, Msg: fmt.Sprintf(format, args...)}
}

// describe names the byte at off for an error message.
func (sc *selectorScanner) describe(off int) string {
	if off >= len(sc.s) {
		return "end of selector"
	}
	c := sc.s[off]
	if c < 0x20 || c >= 0x7f {
		return "character " + quoteChar(sc.s[off:])
	}
	return fmt.Sprintf("%q", string(c))
}

// quoteChar quotes the character s starts with: a whole UTF-8 sequence
// ('é', not the 'Ã' of its first byte), or the byte when it is no UTF-8.
func quoteChar(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError && n <= 1 {
		return fmt.Sprintf(`'\x%02x'`, s[0])
	}
	return fmt.Sprintf("%q", r)
}

// ParseSelector parses a label selector in the Kubernetes grammar of the
// policy language (k=v, k==v, k!=v, k in (a, b), k notin (a, b), k, !k,
// comma-separated; "" or only whitespace selects every endpoint). Errors are
// *SelectorError with the byte offset of the problem.
func ParseSelector(s string) (Selector, error) {
	sel := Selector{Source: s}
	sc := &selectorScanner{s: s}
	sc.skipSpace()
	if sc.eof() {
		return sel, nil
	}
	for {
		sc.skipSpace()
		req, err := sc.requirement()
		if err != nil {
			return Selector{Source: s}, err
		}
		sel.Requirements = append(sel.Requirements, req)
		sc.skipSpace()
		if sc.eof() {
			return sel, nil
		}
		if sc.peek() != ',' {
			return Selector{Source: s}, sc.errf(sc.pos, "unexpected %s; requirements are separated by ','", sc.describe(sc.pos))
		}
		sc.pos++
		sc.skipSpace()
		if sc.eof() {
			return Selector{Source: s}, sc.errf(sc.pos, "expected a requirement after ','")
		}
	}
}

func (sc *selectorScanner) requirement() (Requirement, error) {
	start := sc.pos
	if sc.peek() == '!' {
		sc.pos++
		sc.skipSpace()
		keyOff := sc.pos
		key := sc.word()
		if key == "" {
			return Requirement{}, sc.errf(keyOff, "expected a label key after '!', found %s", sc.describe(keyOff))
		}
		sc.skipSpace()
		if !sc.eof() && sc.peek() != ',' {
			return Requirement{}, sc.errf(sc.pos, "unexpected %s after !%s; '!KEY' takes no operator or value", sc.describe(sc.pos), key)
		}
		return Requirement{Key: key, Op: OpDoesNotExist, Offset: start}, nil
	}
	key := sc.word()
	if key == "" {
		if sc.peek() == ',' {
			return Requirement{}, sc.errf(sc.pos, "empty requirement")
		}
		return Requirement{}, sc.errf(sc.pos, "expected a label key, found %s (keys are letters, digits, '.', '-', '_' and '/')", sc.describe(sc.pos))
	}
	sc.skipSpace()
	if sc.eof() || sc.peek() == ',' {
		return Requirement{Key: key, Op: OpExists, Offset: start}, nil
	}
	var op Operator
	switch {
	case strings.HasPrefix(sc.s[sc.pos:], "=="):
		op, sc.pos = OpEquals, sc.pos+2
	case strings.HasPrefix(sc.s[sc.pos:], "!="):
		op, sc.pos = OpNotEquals, sc.pos+2
	case sc.peek() == '=':
		op, sc.pos = OpEquals, sc.pos+1
	default:
		opOff := sc.pos
		w := sc.word()
		switch w {
		case "in", "notin":
			op = OpIn
			if w == "notin" {
				op = OpNotIn
			}
			vals, err := sc.valueSet(w)
			if err != nil {
				return Requirement{}, err
			}
			return Requirement{Key: key, Op: op, Values: vals, Offset: start}, nil
		case "":
			return Requirement{}, sc.errf(opOff, "unexpected %s after key %q; expected =, ==, !=, in, notin, ',' or the end", sc.describe(opOff), key)
		default:
			return Requirement{}, sc.errf(opOff, "unexpected %q after key %q; expected =, ==, !=, in, notin, ',' or the end", w, key)
		}
	}
	sc.skipSpace()
	valOff := sc.pos
	val := sc.word()
	sc.skipSpace()
	if !sc.eof() && sc.peek() != ',' {
		if val == "" {
			return Requirement{}, sc.errf(valOff, "invalid %s in value of %q (values are letters, digits, '.', '-', '_' and '/')", sc.describe(valOff), key)
		}
		return Requirement{}, sc.errf(sc.pos, "unexpected %s after value %q", sc.describe(sc.pos), val)
	}
	return Requirement{Key: key, Op: op, Values: []string{val}, Offset: start}, nil
}

// valueSet parses "( a, b, ... )" after in/notin. Like Kubernetes, the set
// must not be empty, but a value inside it may be ("k in (a,)").
func (sc *selectorScanner) valueSet(op string) ([]string, error) {
	sc.skipSpace()
	if sc.peek() != '(' {
		return nil, sc.errf(sc.pos, "expected '(' after %q, found %s", op, sc.describe(sc.pos))
	}
	open := sc.pos
	sc.pos++
	sc.skipSpace()
	if sc.peek() == ')' {
		return nil, sc.errf(sc.pos, "%q needs at least one value", op)
	}
	var vals []string
	for {
		sc.skipSpace()
		valOff := sc.pos
		v := sc.word()
		sc.skipSpace()
		switch {
		case sc.eof():
			return nil, sc.errf(open, "unclosed '(': missing ')'")
		case sc.peek() == ',':
			vals = append(vals, v)
			sc.pos++
		case sc.peek() == ')':
			vals = append(vals, v)
			sc.pos++
			return vals, nil
		case v == "":
			return nil, sc.errf(valOff, "invalid %s in value list (values are letters, digits, '.', '-', '_' and '/')", sc.describe(valOff))
		default:
			return nil, sc.errf(sc.pos, "unexpected %s in value list; values are separated by ','", sc.describe(sc.pos))
		}
	}
}

// ParseLabels parses "k=v,k2=v2" into a label set, as `policy trace` takes
// them on the command line. Keys follow the selector rules; values are
// everything up to the next comma (trimmed), so labels that no selector can
// spell are still representable. "" gives an empty set.
func ParseLabels(s string) (Labels, error) {
	out := Labels{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	off := 0
	for _, part := range strings.Split(s, ",") {
		partOff := off
		off += len(part) + 1
		lead := len(part) - len(strings.TrimLeft(part, " \t"))
		k, v, ok := strings.Cut(part, "=")
		key := strings.TrimSpace(k)
		if key == "" {
			return nil, &SelectorError{Offset: partOff + lead, Msg: "expected KEY=VALUE, found an empty key"}
		}
		if !ok {
			return nil, &SelectorError{Offset: partOff + lead, Msg: fmt.Sprintf("expected KEY=VALUE, found %q", strings.TrimSpace(part))}
		}
		for i := 0; i < len(key); i++ {
			if !isLabelChar(key[i]) {
				return nil, &SelectorError{Offset: partOff + lead + i, Msg: fmt.Sprintf("invalid character %s in key %q (keys are letters, digits, '.', '-', '_' and '/')", quoteChar(key[i:]), key)}
			}
		}
		if _, dup := out[key]; dup {
			return nil, &SelectorError{Offset: partOff + lead, Msg: fmt.Sprintf("label %q given twice", key)}
		}
		out[key] = strings.TrimSpace(v)
	}
	return out, nil
}
