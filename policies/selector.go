package policies

import "strings"

// Operator is the relation of one selector requirement.
type Operator uint8

const (
	OpEquals       Operator = iota // k=v, k==v
	OpNotEquals                    // k!=v
	OpIn                           // k in (a, b)
	OpNotIn                        // k notin (a, b)
	OpExists                       // k
	OpDoesNotExist                 // !k
)

// Requirement is one comma-separated term of a selector.
type Requirement struct {
	Key    string
	Op     Operator
	Values []string // one value for OpEquals/OpNotEquals, none for the existence tests
	Offset int      // byte offset of the term inside the selector string
}

// Selector is a parsed Kubernetes-grammar label selector. The zero value (no
// requirements) selects every endpoint.
type Selector struct {
	Source       string
	Requirements []Requirement
}

// Matches reports whether every requirement holds for labels.
func (s Selector) Matches(labels Labels) bool {
	for _, r := range s.Requirements {
		if !r.matches(labels) {
			return false
		}
	}
	return true
}

func (r Requirement) matches(labels Labels) bool {
	v, ok := labels[r.Key]
	switch r.Op {
	case OpEquals:
		return ok && v == r.Values[0]
	case OpNotEquals:
		return !ok || v != r.Values[0]
	case OpIn:
		return ok && contains(r.Values, v)
	case OpNotIn:
		return !ok || !contains(r.Values, v)
	case OpExists:
		return ok
	case OpDoesNotExist:
		return !ok
	}
	return false
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func (s Selector) String() string { return s.Source }

// Canonical writes the requirements back in the selector grammar, whatever
// the Source says (selectors built in Go have none). ParseSelector of the
// result gives the same requirements.
func (s Selector) Canonical() string {
	parts := make([]string, 0, len(s.Requirements))
	for _, r := range s.Requirements {
		switch r.Op {
		case OpEquals:
			parts = append(parts, r.Key+"="+r.Values[0])
		case OpNotEquals:
			parts = append(parts, r.Key+"!="+r.Values[0])
		case OpIn:
			parts = append(parts, r.Key+" in ("+strings.Join(r.Values, ", ")+")")
		case OpNotIn:
			parts = append(parts, r.Key+" notin ("+strings.Join(r.Values, ", ")+")")
		case OpExists:
			parts = append(parts, r.Key)
		case OpDoesNotExist:
			parts = append(parts, "!"+r.Key)
		}
	}
	return strings.Join(parts, ",")
}
