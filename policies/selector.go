package policies

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
