package policies

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
)

// WriteJSON renders the model as stable, diff-friendly JSON: identities in
// order, one entry per line, then the CIDR identities and the L7 rulesets in
// id order. The same model always gives the same bytes (golden tests, `policy
// show`-style output, debugging the datapath).
func (m *Model) WriteJSON(w io.Writer) error {
	var b bytes.Buffer
	line := func(indent, format string, args ...any) {
		b.WriteString(indent)
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	js := func(v any) string {
		out, err := json.Marshal(v)
		if err != nil {
			panic(err) // only plain values below
		}
		return string(out)
	}
	comma := func(i, n int) string {
		if i < n-1 {
			return ","
		}
		return ""
	}

	line("", "{")
	line("  ", `"identities": [`)
	for i, ip := range m.Identities {
		line("    ", `{"identity": %d, "ingress_default_deny": %v, "egress_default_deny": %v, "audit": %v, "entries": [`,
			ip.Identity, ip.IngressDefaultDeny, ip.EgressDefaultDeny, ip.Audit)
		for j, e := range ip.Entries {
			line("      ", `{"dir": %q, "remote": %d, "proto": %q, "port": %d, "prefix": %d, "action": %q, "l7": %d, "audit": %v, "rule": %d}%s`,
				e.Direction, e.Remote, e.Proto, e.Port, e.PortPrefix, e.Action, e.L7, e.Audit, e.RuleID, comma(j, len(ip.Entries)))
		}
		line("    ", "]}%s", comma(i, len(m.Identities)))
	}
	line("  ", "],")
	line("  ", `"cidrs": [`)
	for i, c := range m.CIDRs {
		line("    ", `{"prefix": %q, "identity": %d}%s`, c.Prefix, c.Identity, comma(i, len(m.CIDRs)))
	}
	line("  ", "],")
	line("  ", `"l7": [`)
	ids := slices.Sorted(maps.Keys(m.L7))
	for i, id := range ids {
		line("    ", `{"id": %d, "rules": [`, id)
		rules := m.L7[id].Rules
		for j, r := range rules {
			headers := r.HTTP.Headers
			if headers == nil {
				headers = map[string]string{}
			}
			line("      ", `{"rule": %d, "method": %s, "path": %s, "host": %s, "headers": %s, "pos": %s}%s`,
				r.RuleID, js(r.HTTP.MethodSrc), js(r.HTTP.PathSrc), js(r.HTTP.HostSrc), js(headers), js(r.HTTP.Pos.String()), comma(j, len(rules)))
		}
		line("    ", "]}%s", comma(i, len(ids)))
	}
	line("  ", "]")
	line("", "}")
	_, err := w.Write(b.Bytes())
	return err
}
