package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docCommand is a `membrane ...` command line in the docs: the words after
// "membrane" up to the end of the code span, comment or table cell.
var docCommand = regexp.MustCompile("(?:^|[\\s`(/])membrane((?: [a-z][a-z-]*)+)([^`#|\\n]*)")

// Every `membrane` command line in the README, the docs and the examples'
// READMEs names a command that exists, and only flags that command has.
func TestDocumentedCommandLinesExist(t *testing.T) {
	files := []string{"../../README.md", "../../docs/operations.md", "../../docs/policy.md"}
	more, _ := filepath.Glob("../../examples/*/README.md")
	files = append(files, more...)
	flagRE := regexp.MustCompile(`(?:^|[\s\[|])(--?[a-z][a-z0-9-]*)`)
	checked := 0
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// Shell continuation lines belong to the command above them.
		text := strings.ReplaceAll(string(src), "\\\n", " ")
		for _, m := range docCommand.FindAllStringSubmatch(text, -1) {
			words := strings.Fields(m[1])
			root := newRootCmd()
			c, rest, err := root.Find(words)
			if err != nil || c == root {
				continue // prose: "membrane is ...", "membrane group"
			}
			if c.HasSubCommands() && len(rest) > 0 {
				t.Errorf("%s: `membrane%s`: %q is not a command of %q", f, m[1], rest[0], c.CommandPath())
				continue
			}
			checked++
			for _, fm := range flagRE.FindAllStringSubmatch(m[2], -1) {
				name := strings.TrimLeft(fm[1], "-")
				var ok bool
				if strings.HasPrefix(fm[1], "--") {
					ok = c.Flags().Lookup(name) != nil || c.InheritedFlags().Lookup(name) != nil
				} else {
					ok = c.Flags().ShorthandLookup(name) != nil
				}
				if !ok {
					t.Errorf("%s: `membrane%s%s`: %s has no flag %s", f, m[1], m[2], c.CommandPath(), fm[1])
				}
			}
		}
	}
	if checked < 20 {
		t.Fatalf("checked only %d command lines: the scan is broken", checked)
	}
}
