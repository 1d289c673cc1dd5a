package packaging

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

var (
	mdHeading  = regexp.MustCompile(`^(#{1,6})\s+(.*?)\s*#*\s*$`)
	mdListItem = regexp.MustCompile(`^(\s*)([-*+]|\d+[.)])\s+(.*)$`)
	mdTableSep = regexp.MustCompile(`^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$`)
	mdCode     = regexp.MustCompile("`([^`]+)`")
	mdBold     = regexp.MustCompile(`\*\*([^*]+)\*\*`)
	mdItalic   = regexp.MustCompile(`(^|[^*\w])\*([^*\s][^*]*)\*`)
	mdLink     = regexp.MustCompile(`\[([^\]]+)\]\(([^)]+)\)`)
)

// MarkdownManPage converts a Markdown document (docs/policy.md) into a man
// page. It knows the Markdown those docs use: ATX headings, paragraphs,
// bullet and numbered lists, fenced code, tables (kept as preformatted
// text), `code`, **bold**, *emphasis* and links. The first level-1 heading
// is the page's title and the text under it up to the first "## " its
// description.
func MarkdownManPage(name string, section int, md, version string, date time.Time, summary string) ManPage {
	var b strings.Builder
	header(&b, name, section, version, date, "Membrane Manual")
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n", roffText(name), roffText(summary))
	lines := strings.Split(strings.ReplaceAll(md, "\r", ""), "\n")
	inCode := false
	inTable := false
	para := []string{}
	flush := func() {
		if len(para) > 0 {
			b.WriteString(inline(strings.Join(para, " ")) + "\n")
			para = para[:0]
		}
	}
	started := false
	for _, line := range lines {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~") {
			flush()
			if !inCode {
				b.WriteString(".PP\n.RS 4\n.nf\n")
			} else {
				b.WriteString(".fi\n.RE\n")
			}
			inCode = !inCode
			continue
		}
		if inCode {
			b.WriteString(roffLine(escape(line)))
			continue
		}
		isTableLine := strings.HasPrefix(trimmed, "|")
		if inTable && !isTableLine {
			b.WriteString(".fi\n.RE\n")
			inTable = false
		}
		if isTableLine {
			flush()
			if !inTable {
				b.WriteString(".PP\n.RS 4\n.nf\n")
				inTable = true
			}
			if mdTableSep.MatchString(trimmed) {
				continue
			}
			cells := strings.Split(strings.Trim(trimmed, "|"), "|")
			for i := range cells {
				cells[i] = plain(strings.TrimSpace(cells[i]))
			}
			b.WriteString(roffLine(escape(strings.Join(cells, "  |  "))))
			continue
		}
		if m := mdHeading.FindStringSubmatch(line); m != nil {
			flush()
			title := plain(m[2])
			switch {
			case len(m[1]) == 1 && !started:
				b.WriteString(".SH DESCRIPTION\n")
				started = true
			case len(m[1]) <= 2:
				fmt.Fprintf(&b, ".SH \"%s\"\n", strings.ToUpper(escape(title)))
			default:
				fmt.Fprintf(&b, ".SS \"%s\"\n", escape(title))
			}
			continue
		}
		if !started {
			b.WriteString(".SH DESCRIPTION\n")
			started = true
		}
		if trimmed == "" {
			flush()
			continue
		}
		if m := mdListItem.FindStringSubmatch(line); m != nil {
			flush()
			bullet, indent := `\(bu`, 2
			if m[2][0] >= '0' && m[2][0] <= '9' {
				bullet, indent = m[2], len(m[2])+1
			}
			if len(m[1]) >= 2 {
				b.WriteString(".RS 2\n")
				fmt.Fprintf(&b, ".IP %s %d\n%s\n.RE\n", bullet, indent, inline(m[3]))
				continue
			}
			fmt.Fprintf(&b, ".IP %s %d\n", bullet, indent)
			para = append(para, m[3])
			continue
		}
		if len(para) == 0 {
			b.WriteString(".PP\n")
		}
		para = append(para, trimmed)
	}
	flush()
	if inCode || inTable {
		b.WriteString(".fi\n.RE\n")
	}
	b.WriteString(".SH \"SEE ALSO\"\n.BR membrane (1),\n.BR membrane-policy-check (1),\n.BR membraned (8)\n")
	return ManPage{Name: fmt.Sprintf("%s.%d", name, section), Section: section, Roff: b.String()}
}

// mdLinkText renders a Markdown link for a man page: the text alone for links
// inside the documentation (anchors and relative paths mean nothing in
// man), the text and the address for web links.
func mdLinkText(m string) string {
	sub := mdLink.FindStringSubmatch(m)
	if strings.HasPrefix(sub[2], "http://") || strings.HasPrefix(sub[2], "https://") {
		return sub[1] + " <" + sub[2] + ">"
	}
	return sub[1]
}

// plain drops Markdown emphasis and code marks (inside preformatted text).
func plain(s string) string {
	s = mdLink.ReplaceAllStringFunc(s, mdLinkText)
	s = mdCode.ReplaceAllString(s, "$1")
	s = mdBold.ReplaceAllString(s, "$1")
	return s
}

// inline converts inline Markdown to roff font changes on escaped text.
func inline(s string) string {
	s = mdLink.ReplaceAllStringFunc(s, mdLinkText)
	// Protect code spans from the other rules by escaping them first.
	var codes []string
	s = mdCode.ReplaceAllStringFunc(s, func(m string) string {
		codes = append(codes, m[1:len(m)-1])
		return fmt.Sprintf("\x00%d\x00", len(codes)-1)
	})
	s = escape(s)
	s = mdBold.ReplaceAllString(s, `\fB$1\fR`)
	s = mdItalic.ReplaceAllString(s, `$1\fI$2\fR`)
	for i, c := range codes {
		s = strings.Replace(s, fmt.Sprintf("\x00%d\x00", i), `\fB`+escape(c)+`\fR`, 1)
	}
	return strings.TrimSuffix(roffLine(s), "\n")
}
