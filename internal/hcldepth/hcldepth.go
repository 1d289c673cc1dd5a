package hcldepth

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Max is how deep a file may nest, and how many unary operators it may
// chain: far more than any configuration or policy needs, far less than
// what overflows the parser's stack.
const Max = 256

// Check returns an error at the first token of src that nests deeper than
// Max, or nil. Lexing errors are left to the parser, which reports them.
func Check(src []byte, filename string) *hcl.Diagnostic {
	depth, unary := 0, 0
	toks, _ := hclsyntax.LexConfig(src, filename, hcl.InitialPos)
	for _, tok := range toks {
		switch tok.Type {
		case hclsyntax.TokenOBrace, hclsyntax.TokenOBrack, hclsyntax.TokenOParen, hclsyntax.TokenOQuote,
			hclsyntax.TokenOHeredoc, hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl:
			depth++
		case hclsyntax.TokenCBrace, hclsyntax.TokenCBrack, hclsyntax.TokenCParen, hclsyntax.TokenCQuote,
			hclsyntax.TokenCHeredoc, hclsyntax.TokenTemplateSeqEnd:
			depth--
		}
		if tok.Type == hclsyntax.TokenBang || tok.Type == hclsyntax.TokenMinus {
			unary++
		} else if tok.Type != hclsyntax.TokenNewline {
			unary = 0
		}
		if depth > Max || unary > Max {
			rng := tok.Range
			return &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Nesting too deep",
				Detail:   fmt.Sprintf("Blocks, lists, maps, parentheses and strings nest at most %d deep here, and at most as many operators chain.", Max),
				Subject:  &rng,
			}
		}
	}
	return nil
}
