package policies

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func req(key string, op Operator, off int, vals ...string) Requirement {
	return Requirement{Key: key, Op: op, Values: vals, Offset: off}
}

func TestParseSelectorGrammar(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Requirement
	}{
		{"", nil},
		{"   ", nil},
		{"app=web", []Requirement{req("app", OpEquals, 0, "web")}},
		{"app==web", []Requirement{req("app", OpEquals, 0, "web")}},
		{"app!=web", []Requirement{req("app", OpNotEquals, 0, "web")}},
		{"k=", []Requirement{req("k", OpEquals, 0, "")}},
		{"k!=", []Requirement{req("k", OpNotEquals, 0, "")}},
		{"env in (prod, staging)", []Requirement{req("env", OpIn, 0, "prod", "staging")}},
		{"env notin (dev)", []Requirement{req("env", OpNotIn, 0, "dev")}},
		{"env in(a,b)", []Requirement{req("env", OpIn, 0, "a", "b")}},
		{"k in (a,)", []Requirement{req("k", OpIn, 0, "a", "")}},
		{"team", []Requirement{req("team", OpExists, 0)}},
		{"!legacy", []Requirement{req("legacy", OpDoesNotExist, 0)}},
		{"! legacy", []Requirement{req("legacy", OpDoesNotExist, 0)}},
		{"in", []Requirement{req("in", OpExists, 0)}},
		{"in=x", []Requirement{req("in", OpEquals, 0, "x")}},
		{"com.docker.compose.service=web", []Requirement{req("com.docker.compose.service", OpEquals, 0, "web")}},
		{"vendor.example/role=edge_node-1", []Requirement{req("vendor.example/role", OpEquals, 0, "edge_node-1")}},
		{" a = b , !c ,d notin ( x , y ) ,e\t", []Requirement{
			req("a", OpEquals, 1, "b"), req("c", OpDoesNotExist, 9), req("d", OpNotIn, 13, "x", "y"), req("e", OpExists, 32),
		}},
	} {
		sel, err := ParseSelector(tc.in)
		if err != nil {
			t.Errorf("ParseSelector(%q): %v", tc.in, err)
			continue
		}
		if sel.Source != tc.in || !reflect.DeepEqual(sel.Requirements, tc.want) {
			t.Errorf("ParseSelector(%q) = %+v, want %+v", tc.in, sel.Requirements, tc.want)
		}
	}
}

func TestParseSelectorErrorsCarryOffset(t *testing.T) {
	for _, tc := range []struct {
		in  string
		off int
		msg string
	}{
		{"app=web,", 8, "expected a requirement after ','"},
		{",app", 0, "empty requirement"},
		{"a,,b", 2, "empty requirement"},
		{"app>3", 3, `unexpected ">" after key "app"`},
		{"app = my:app", 8, `unexpected ":" after value "my"`},
		{"app=:x", 4, `invalid ":" in value of "app"`},
		{"app in (a, b", 7, "unclosed '('"},
		{"app in ()", 8, `"in" needs at least one value`},
		{"app notin a", 10, `expected '(' after "notin"`},
		{"app in (a b)", 10, "values are separated by ','"},
		{"app in (a, :)", 11, "invalid \":\" in value list"},
		{"!", 1, "expected a label key after '!'"},
		{"!a=b", 2, "'!KEY' takes no operator or value"},
		{"app exists", 4, `unexpected "exists" after key "app"`},
		{"=v", 0, "expected a label key"},
		{"ключ=v", 0, "expected a label key"},
		{"a=b c=d", 4, "unexpected \"c\" after value \"b\""},
		{"a=b\x00", 3, `unexpected character '\x00'`},
	} {
		_, err := ParseSelector(tc.in)
		var se *SelectorError
		if !errors.As(err, &se) {
			t.Errorf("ParseSelector(%q) error %v, want *SelectorError", tc.in, err)
			continue
		}
		if se.Offset != tc.off || !strings.Contains(se.Msg, tc.msg) {
			t.Errorf("ParseSelector(%q) = offset %d %q, want offset %d containing %q", tc.in, se.Offset, se.Msg, tc.off, tc.msg)
		}
	}
}

func TestSelectorMatchesParsedForms(t *testing.T) {
	labels := Labels{"app": "web", "env": "prod", "empty": ""}
	for in, want := range map[string]bool{
		"":                       true,
		"app=web":                true,
		"app==api":               false,
		"app!=api":               true,
		"missing!=x":             true,
		"env in (dev, prod)":     true,
		"env notin (dev, prod)":  false,
		"missing notin (a)":      true,
		"missing in (a)":         false,
		"app":                    true,
		"!app":                   false,
		"!missing":               true,
		"empty=":                 true,
		"empty":                  true,
		"app=web,env=dev":        false,
		"app=web, env in (prod)": true,
	} {
		sel, err := ParseSelector(in)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got := sel.Matches(labels); got != want {
			t.Errorf("%q.Matches(%v) = %v, want %v", in, labels, got, want)
		}
	}
}

func TestParseLabels(t *testing.T) {
	got, err := ParseLabels(" app=web, com.docker.compose.service = db ,image=nginx:1.25,empty=")
	want := Labels{"app": "web", "com.docker.compose.service": "db", "image": "nginx:1.25", "empty": ""}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ParseLabels = %v, %v; want %v", got, err, want)
	}
	if got, err := ParseLabels(""); err != nil || got == nil || len(got) != 0 {
		t.Errorf("ParseLabels(\"\") = %v, %v", got, err)
	}
	for _, tc := range []struct {
		in  string
		off int
		msg string
	}{
		{"app", 0, "expected KEY=VALUE"},
		{"a=b,,c=d", 4, "empty key"},
		{"a=b, =c", 5, "empty key"},
		{"a=1,a=2", 4, `label "a" given twice`},
		{"a=1,b:c=2", 5, `invalid character ':'`},
	} {
		_, err := ParseLabels(tc.in)
		var se *SelectorError
		if !errors.As(err, &se) || se.Offset != tc.off || !strings.Contains(se.Msg, tc.msg) {
			t.Errorf("ParseLabels(%q) error %v, want offset %d containing %q", tc.in, err, tc.off, tc.msg)
		}
	}
}

// An error about a character outside ASCII names that character, not the
// first byte of its UTF-8 encoding read as Latin-1 ('é' is not 'Ã'); a
// byte that is no UTF-8 is shown as the byte.
func TestSelectorErrorNamesNonASCIICharacter(t *testing.T) {
	for _, tc := range []struct {
		in  string
		off int
		msg string
	}{
		{"app=é", 4, `invalid character 'é' in value of "app"`},
		{"app=web,ключ=v", 8, `expected a label key, found character 'к'`},
		{"app in (a, ü)", 11, `invalid character 'ü' in value list`},
		{"app=b\xff", 5, `unexpected character '\xff' after value "b"`},
	} {
		_, err := ParseSelector(tc.in)
		var se *SelectorError
		if !errors.As(err, &se) || se.Offset != tc.off || !strings.Contains(se.Msg, tc.msg) {
			t.Errorf("ParseSelector(%q) error %v, want offset %d containing %q", tc.in, err, tc.off, tc.msg)
		}
	}
	_, err := ParseLabels("a=1,kéy=2")
	var se *SelectorError
	if !errors.As(err, &se) || se.Offset != 5 || !strings.Contains(se.Msg, `invalid character 'é' in key "kéy"`) {
		t.Errorf("ParseLabels error %v, want offset 5 naming 'é'", err)
	}
}
