package policies

import (
	"bytes"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// fastParse parses a policy file written in the plain subset of HCL that
// policy files use in practice, building the same hclsyntax tree that
// hclsyntax.ParseConfig builds (same node types, values and ranges; only the
// bodies' own SrcRange/EndRange, which nothing here reads, are approximate).
// HCL's lexer and general expression parser are most of the cost of loading
// a large policy set; this subset parser is several times faster.
//
// The subset: printable ASCII, tabs and '\n' (no '\r'), without "${", "%{",
// "<<" or "/*"; blocks with quoted labels and a body on the following lines
// (or {}); attributes whose value is a quoted string, whole number, true,
// false, null, a list of those or a map with quoted or bare keys; no string
// escapes but \\ and \"; '#' and '//' comments. Anything else, any syntax
// error included, returns ok=false and the caller parses the file with HCL
// itself, so that every syntax diagnostic is HCL's own. parse_fast_test.go
// checks the trees against HCL's.
func fastParse(src []byte, filename string) (body *hclsyntax.Body, ok bool) {
	for _, c := range src {
		if c >= 0x7f || c < 0x20 && c != '\n' && c != '\t' {
			return nil, false
		}
	}
	for _, bad := range [...]string{"${", "%{", "<<", "/*"} {
		if bytes.Contains(src, []byte(bad)) {
			return nil, false
		}
	}
	p := &fastParser{src: src, file: filename, line: 1, names: map[string]string{}}
	defer func() {
		// A failed parse unwinds with a fallback panic from anywhere
		// below; any other panic is a bug and goes on.
		if r := recover(); r != nil {
			if _, is := r.(fallback); !is {
				panic(r)
			}
			body, ok = nil, false
		}
	}()
	body = p.body(true)
	return body, true
}

// fallback is the panic value that unwinds fastParse when the input leaves
// the subset.
type fallback struct{}

type fastParser struct {
	src       []byte
	file      string
	pos       int               // byte offset
	line      int               // 1-based line of pos
	lineStart int               // byte offset of that line's first byte
	names     map[string]string // identifiers seen, to share one string each
	depth     int               // nesting of blocks and collections
}

// maxFastDepth bounds the recursion; deeper files are HCL's to parse.
const maxFastDepth = 64

func (p *fastParser) enter() {
	p.depth++
	if p.depth > maxFastDepth {
		p.fail()
	}
}

func (p *fastParser) fail() { panic(fallback{}) }

func (p *fastParser) at() hcl.Pos {
	return hcl.Pos{Line: p.line, Column: p.pos - p.lineStart + 1, Byte: p.pos}
}

func (p *fastParser) rng(start hcl.Pos) hcl.Range {
	return hcl.Range{Filename: p.file, Start: start, End: p.at()}
}

func (p *fastParser) peek() byte {
	if p.pos >= len(p.src) {
		return 0
	}
	return p.src[p.pos]
}

// spaces skips blanks on the current line.
func (p *fastParser) spaces() {
	for p.pos < len(p.src) && (p.src[p.pos] == ' ' || p.src[p.pos] == '\t') {
		p.pos++
	}
}

func (p *fastParser) newline() {
	p.pos++
	p.line++
	p.lineStart = p.pos
}

// endOfLine consumes blanks, an optional line comment and the newline that
// must end an attribute or block; at the end of the file, eofOK decides.
func (p *fastParser) endOfLine(eofOK bool) {
	p.spaces()
	switch {
	case p.pos >= len(p.src):
		if !eofOK {
			p.fail()
		}
	case p.src[p.pos] == '\n':
		p.newline()
	case p.isComment():
		p.comment()
	default:
		p.fail()
	}
}

func (p *fastParser) isComment() bool {
	c := p.peek()
	return c == '#' || c == '/' && p.pos+1 < len(p.src) && p.src[p.pos+1] == '/'
}

// comment skips a line comment and the newline that ends it.
func (p *fastParser) comment() {
	for p.pos < len(p.src) && p.src[p.pos] != '\n' {
		p.pos++
	}
	if p.pos < len(p.src) {
		p.newline()
	}
}

func isIdentStart(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' }
func isIdentChar(c byte) bool  { return isIdentStart(c) || c >= '0' && c <= '9' || c == '-' }

func (p *fastParser) ident() (string, hcl.Range) {
	start := p.at()
	if !isIdentStart(p.peek()) {
		p.fail()
	}
	for p.pos < len(p.src) && isIdentChar(p.src[p.pos]) {
		p.pos++
	}
	b := p.src[start.Byte:p.pos]
	name, ok := p.names[string(b)] // no allocation for the lookup
	if !ok {
		name = string(b)
		p.names[name] = name
	}
	return name, p.rng(start)
}

// body parses items up to the end of the file (top) or a closing brace,
// which it leaves for the caller.
func (p *fastParser) body(top bool) *hclsyntax.Body {
	b := &hclsyntax.Body{Attributes: hclsyntax.Attributes{}, Blocks: hclsyntax.Blocks{}}
	start := p.at()
	for {
		p.spaces()
		switch {
		case p.pos >= len(p.src):
			if !top {
				p.fail()
			}
			b.SrcRange = p.rng(start)
			b.EndRange = hcl.Range{Filename: p.file, Start: p.at(), End: p.at()}
			return b
		case p.src[p.pos] == '\n':
			p.newline()
			continue
		case p.isComment():
			p.comment()
			continue
		case p.src[p.pos] == '}':
			if top {
				p.fail()
			}
			b.SrcRange = p.rng(start)
			return b
		}
		name, nameRng := p.ident()
		p.spaces()
		if p.peek() == '=' {
			if p.pos+1 < len(p.src) && p.src[p.pos+1] == '=' {
				p.fail()
			}
			if _, dup := b.Attributes[name]; dup {
				p.fail() // HCL reports it
			}
			eqStart := p.at()
			p.pos++
			eqRng := p.rng(eqStart)
			p.spaces()
			expr := p.expr()
			b.Attributes[name] = &hclsyntax.Attribute{
				Name:        name,
				Expr:        expr,
				SrcRange:    hcl.RangeBetween(nameRng, expr.Range()),
				NameRange:   nameRng,
				EqualsRange: eqRng,
			}
			p.endOfLine(top)
			continue
		}
		b.Blocks = append(b.Blocks, p.block(name, nameRng, top))
	}
}

func (p *fastParser) block(typ string, typRng hcl.Range, top bool) *hclsyntax.Block {
	p.enter()
	defer func() { p.depth-- }()
	blk := &hclsyntax.Block{Type: typ, TypeRange: typRng}
	for p.peek() == '"' {
		s, r := p.quoted()
		blk.Labels = append(blk.Labels, s)
		blk.LabelRanges = append(blk.LabelRanges, r)
		p.spaces()
	}
	if p.peek() != '{' {
		p.fail()
	}
	open := p.at()
	p.pos++
	blk.OpenBraceRange = p.rng(open)
	p.spaces()
	// The body starts on a new line, or is empty ({}): one-line blocks
	// with an attribute go to HCL.
	if p.pos < len(p.src) && p.src[p.pos] != '\n' && p.src[p.pos] != '}' && !p.isComment() {
		p.fail()
	}
	blk.Body = p.body(false)
	closeStart := p.at()
	p.pos++ // '}'
	blk.CloseBraceRange = p.rng(closeStart)
	blk.Body.EndRange = blk.CloseBraceRange
	p.endOfLine(top)
	return blk
}

// quoted reads a string literal and returns its value and the range with
// the quotes. Templates are excluded by the subset check; of the escapes,
// \\ and \" are read (regular expressions need the first), the others go to
// HCL.
func (p *fastParser) quoted() (string, hcl.Range) {
	start := p.at()
	p.pos++
	escaped := false
	for p.pos < len(p.src) && p.src[p.pos] != '"' {
		switch p.src[p.pos] {
		case '\n':
			p.fail()
		case '\\':
			if p.pos+1 >= len(p.src) || p.src[p.pos+1] != '\\' && p.src[p.pos+1] != '"' {
				p.fail()
			}
			escaped = true
			p.pos++
		}
		p.pos++
	}
	if p.pos >= len(p.src) {
		p.fail()
	}
	raw := p.src[start.Byte+1 : p.pos]
	var s string
	if escaped {
		b := make([]byte, 0, len(raw))
		for i := 0; i < len(raw); i++ {
			if raw[i] == '\\' {
				i++
			}
			b = append(b, raw[i])
		}
		s = string(b)
	} else {
		s = string(raw)
	}
	p.pos++
	return s, p.rng(start)
}

// expr parses one value of the subset.
func (p *fastParser) expr() hclsyntax.Expression {
	p.enter()
	defer func() { p.depth-- }()
	start := p.at()
	switch c := p.peek(); {
	case c == '"':
		s, r := p.quoted()
		inner := hcl.Range{Filename: p.file, Start: r.Start, End: r.End}
		inner.Start.Byte++
		inner.Start.Column++
		inner.End.Byte--
		inner.End.Column--
		if s == "" {
			// HCL places an empty string's part after the closing quote.
			inner.Start, inner.End = r.End, r.End
		}
		return &hclsyntax.TemplateExpr{
			Parts:    []hclsyntax.Expression{&hclsyntax.LiteralValueExpr{Val: cty.StringVal(s), SrcRange: inner}},
			SrcRange: r,
		}
	case c >= '0' && c <= '9':
		for p.pos < len(p.src) && p.src[p.pos] >= '0' && p.src[p.pos] <= '9' {
			p.pos++
		}
		if c := p.peek(); c == '.' || c == 'e' || c == 'E' || isIdentChar(c) {
			p.fail()
		}
		v, err := cty.ParseNumberVal(string(p.src[start.Byte:p.pos]))
		if err != nil {
			p.fail()
		}
		return &hclsyntax.LiteralValueExpr{Val: v, SrcRange: p.rng(start)}
	case isIdentStart(c):
		name, r := p.ident()
		var v cty.Value
		switch name {
		case "true":
			v = cty.True
		case "false":
			v = cty.False
		case "null":
			v = cty.NullVal(cty.DynamicPseudoType)
		default:
			p.fail()
		}
		if c := p.peek(); c == '.' || c == '[' || c == '(' {
			p.fail()
		}
		return &hclsyntax.LiteralValueExpr{Val: v, SrcRange: r}
	case c == '[':
		p.pos++
		t := &hclsyntax.TupleConsExpr{OpenRange: p.rng(start)}
		for {
			p.blank()
			if p.peek() == ']' {
				break
			}
			t.Exprs = append(t.Exprs, p.expr())
			p.blank()
			if p.peek() == ',' {
				p.pos++
				continue
			}
			if p.peek() != ']' {
				p.fail()
			}
		}
		p.pos++
		t.SrcRange = p.rng(start)
		p.trailer()
		return t
	case c == '{':
		p.pos++
		o := &hclsyntax.ObjectConsExpr{OpenRange: p.rng(start)}
		for {
			p.blank()
			if p.peek() == '}' {
				break
			}
			var k hclsyntax.Expression
			switch c := p.peek(); {
			case c == '"':
				k = p.expr()
			case isIdentStart(c):
				// A bare key is a one-name traversal that HCL's
				// ObjectConsKeyExpr reads as a string.
				name, r := p.ident()
				if name == "true" || name == "false" || name == "null" {
					p.fail()
				}
				k = &hclsyntax.ScopeTraversalExpr{
					Traversal: hcl.Traversal{hcl.TraverseRoot{Name: name, SrcRange: r}},
					SrcRange:  r,
				}
			default:
				p.fail()
			}
			p.spaces()
			if p.peek() != '=' || p.pos+1 < len(p.src) && p.src[p.pos+1] == '=' {
				p.fail()
			}
			p.pos++
			p.spaces()
			v := p.expr()
			o.Items = append(o.Items, hclsyntax.ObjectConsItem{
				KeyExpr:   &hclsyntax.ObjectConsKeyExpr{Wrapped: k},
				ValueExpr: v,
			})
			p.spaces()
			switch p.peek() {
			case ',':
				p.pos++
			case '\n', '#', '/':
				// newline-separated items; blank() checks the comment
			case '}':
			default:
				p.fail()
			}
		}
		p.pos++
		o.SrcRange = p.rng(start)
		p.trailer()
		return o
	}
	p.fail()
	return nil
}

// trailer rejects an index or attribute access after a collection ([..][0]),
// which HCL would parse as a traversal.
func (p *fastParser) trailer() {
	if c := p.peek(); c == '[' || c == '.' {
		p.fail()
	}
}

// blank skips blanks, newlines and line comments inside brackets, where HCL
// ignores newlines.
func (p *fastParser) blank() {
	for {
		p.spaces()
		switch {
		case p.pos < len(p.src) && p.src[p.pos] == '\n':
			p.newline()
		case p.isComment():
			p.comment()
		default:
			if p.pos >= len(p.src) {
				p.fail()
			}
			return
		}
	}
}
