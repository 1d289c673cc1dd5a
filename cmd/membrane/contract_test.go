package main

import (
	"regexp"
	"strings"
	"testing"
)

// The command lines of the policy language's contract (policy-language.md,
// "The command line contract"), word for word.
var contractSynopses = map[string]string{
	"policy check": "membrane policy check [--format text|json] PATH...",
	"policy trace": `membrane policy trace --policies PATH [--from-labels "k=v,..." | --from-entity NAME | --from-ip IP]
  [--to-labels "k=v,..." | --to-entity NAME | --to-ip IP] [--port N/PROTO | --icmp TYPE]
  [--http-method M --http-path P [--http-host H] [--http-header K=V]...] [--format text|json]
  --live --from-container NAME|ID --to-container NAME|ID`,
}

// Every flag the contract names exists on its command, and takes a value
// exactly when the contract gives it one.
func TestContractFlagsExist(t *testing.T) {
	flag := regexp.MustCompile(`--([a-z][a-z0-9-]*)( [^-\s\[|]|)`)
	root := newRootCmd()
	for path, synopsis := range contractSynopses {
		c, _, err := root.Find(strings.Fields(path))
		if err != nil || c.CommandPath() != "membrane "+path {
			t.Fatalf("membrane %s: %v", path, err)
		}
		for _, m := range flag.FindAllStringSubmatch(synopsis, -1) {
			f := c.Flags().Lookup(m[1])
			if f == nil {
				t.Errorf("membrane %s has no --%s, which the contract names", path, m[1])
				continue
			}
			if takesValue := f.Value.Type() != "bool"; takesValue != (m[2] != "") {
				t.Errorf("membrane %s --%s: takes a value %v, the contract says %v", path, m[1], takesValue, m[2] != "")
			}
		}
	}
}
