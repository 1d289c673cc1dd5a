package endpoint

import (
	"fmt"
	"maps"
	"regexp"
	"strings"
)

// Derived label keys (policy-language.md, "Labels an endpoint carries").
const (
	LabelComposeProject      = "compose.project"
	LabelComposeService      = "compose.service"
	LabelNomadNamespace      = "nomad.namespace"
	LabelNomadJob            = "nomad.job"
	LabelNomadGroup          = "nomad.group"
	LabelNomadTask           = "nomad.task"
	LabelContainerdNamespace = "containerd.namespace"
	LabelContainerName       = "container.name"
)

// derivedFrom maps a derived key to the runtime label it copies.
var derivedFrom = [...]struct{ derived, source string }{
	{LabelComposeProject, "com.docker.compose.project"},
	{LabelComposeService, "com.docker.compose.service"},
	{LabelNomadNamespace, "com.hashicorp.nomad.namespace"},
	{LabelNomadJob, "com.hashicorp.nomad.job_name"},
	{LabelNomadGroup, "com.hashicorp.nomad.task_group_name"},
	{LabelNomadTask, "com.hashicorp.nomad.task_name"},
}

// MergeLabels returns the raw label set of an endpoint: the netns owner's
// labels, plus each label that every joined container carries with the same
// value. The owner wins a conflict: it is the one whose netns this is. With
// no joined containers, it is a copy of owner.
func MergeLabels(owner map[string]string, joined []map[string]string) map[string]string {
	out := maps.Clone(owner)
	if out == nil {
		out = map[string]string{}
	}
	if len(joined) == 0 {
		return out
	}
	for k, v := range joined[0] {
		shared := true
		for _, j := range joined[1:] {
			if w, ok := j[k]; !ok || w != v {
				shared = false
				break
			}
		}
		if _, taken := out[k]; shared && !taken {
			out[k] = v
		}
	}
	return out
}

// DeriveLabels adds the derived labels to raw (in place) and returns it.
// name is the runtime's container name of the netns owner (a leading "/" is
// dropped); containerdNamespace is "" for Docker. A derived label replaces a
// raw label of the same key only when its source is present, so a user's own
// "compose.project" label survives on a non-Compose container.
func DeriveLabels(raw map[string]string, name, containerdNamespace string) map[string]string {
	if raw == nil {
		raw = map[string]string{}
	}
	for _, d := range derivedFrom {
		if v, ok := raw[d.source]; ok {
			raw[d.derived] = v
		}
	}
	if containerdNamespace != "" {
		raw[LabelContainerdNamespace] = containerdNamespace
	}
	if n := strings.TrimPrefix(name, "/"); n != "" {
		raw[LabelContainerName] = n
	}
	return raw
}

// defaultExcludeExact and defaultExcludePrefix are the volatile labels that
// do not count for identity by default.
var defaultExcludeExact = map[string]bool{
	"com.docker.compose.config-hash":      true,
	"com.docker.compose.container-number": true,
	"com.docker.compose.oneoff":           true,
	"com.docker.compose.replace":          true,
	"com.docker.compose.version":          true,
	"com.docker.compose.image":            true,
	"com.docker.compose.depends_on":       true,
	"com.docker.compose.slug":             true,
	"com.hashicorp.nomad.alloc_id":        true,
	LabelContainerName:                    true,
}

var defaultExcludePrefix = []string{
	"com.docker.compose.project.", // not com.docker.compose.project itself
	"com.hashicorp.nomad.node_",
	"org.opencontainers.image.",
}

// DefaultExcluded reports whether key is one of the policy language's default
// volatile labels.
func DefaultExcluded(key string) bool {
	if defaultExcludeExact[key] {
		return true
	}
	for _, p := range defaultExcludePrefix {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// LabelFilter is the config's `labels { include = [...] exclude = [...] }`:
// it changes the list of labels that do not count. The zero value applies
// only the default excludes.
//
// Semantics (regular expressions on the key, matched like
// regexp.MatchString, so unanchored unless the pattern says ^...$, the same
// way daemon/config compiles them):
//   - a key that matches an Exclude pattern does not count;
//   - a default-excluded (volatile) key does not count unless an Include
//     pattern matches it (include = ["^container\\.name$"] brings
//     container.name back);
//   - every other key counts.
type LabelFilter struct {
	Include []*regexp.Regexp
	Exclude []*regexp.Regexp
}

// PatternError is a bad include/exclude pattern: which list, which element.
type PatternError struct {
	List    string // "include" or "exclude"
	Index   int    // 0-based
	Pattern string
	Err     error
}

func (e *PatternError) Error() string {
	return fmt.Sprintf("labels %s[%d] %q: %v", e.List, e.Index, e.Pattern, e.Err)
}

func (e *PatternError) Unwrap() error { return e.Err }

// NewLabelFilter compiles include and exclude patterns (regexp.Compile, as
// given). A bad pattern is a *PatternError naming its list and index.
func NewLabelFilter(include, exclude []string) (LabelFilter, error) {
	var f LabelFilter
	for i, p := range include {
		re, err := regexp.Compile(p)
		if err != nil {
			return LabelFilter{}, &PatternError{List: "include", Index: i, Pattern: p, Err: err}
		}
		f.Include = append(f.Include, re)
	}
	for i, p := range exclude {
		re, err := regexp.Compile(p)
		if err != nil {
			return LabelFilter{}, &PatternError{List: "exclude", Index: i, Pattern: p, Err: err}
		}
		f.Exclude = append(f.Exclude, re)
	}
	return f, nil
}

func anyMatch(res []*regexp.Regexp, key string) bool {
	for _, re := range res {
		if re != nil && re.MatchString(key) {
			return true
		}
	}
	return false
}

// Relevant reports whether key counts for identity and selection.
func (f LabelFilter) Relevant(key string) bool {
	if anyMatch(f.Exclude, key) {
		return false
	}
	if DefaultExcluded(key) && !anyMatch(f.Include, key) {
		return false
	}
	return true
}

// IdentityLabels returns the identity-relevant subset of an endpoint's labels
// (raw plus derived, as in Endpoint.Labels). It is pure: the same labels and
// filter always give the same set. The result is assignable to
// policies.Labels (same underlying type); this package does not import
// policies so that the runtime watchers build independently of the language.
func IdentityLabels(labels map[string]string, f LabelFilter) map[string]string {
	out := map[string]string{}
	for k, v := range labels {
		if f.Relevant(k) {
			out[k] = v
		}
	}
	return out
}
