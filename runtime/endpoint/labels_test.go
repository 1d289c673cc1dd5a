package endpoint

import (
	"errors"
	"maps"
	"regexp/syntax"
	"testing"
)

func TestMergeLabelsOwnerPlusSharedByEveryJoined(t *testing.T) {
	owner := map[string]string{"app": "pause", "com.hashicorp.nomad.alloc_id": "a1"}
	joined := []map[string]string{
		{"app": "web", "com.hashicorp.nomad.job_name": "shop", "com.hashicorp.nomad.task_name": "web", "tier": "1"},
		{"app": "envoy", "com.hashicorp.nomad.job_name": "shop", "com.hashicorp.nomad.task_name": "envoy"},
	}
	got := MergeLabels(owner, joined)
	want := map[string]string{"app": "pause", "com.hashicorp.nomad.alloc_id": "a1", "com.hashicorp.nomad.job_name": "shop"}
	if !maps.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if owner["com.hashicorp.nomad.job_name"] != "" {
		t.Fatal("MergeLabels modified the owner's map")
	}
	if got := MergeLabels(nil, nil); got == nil || len(got) != 0 {
		t.Fatalf("empty merge: %v", got)
	}
}

func TestDeriveLabels(t *testing.T) {
	raw := map[string]string{
		"com.docker.compose.project": "shop", "com.docker.compose.service": "web",
		"com.hashicorp.nomad.namespace": "default", "com.hashicorp.nomad.job_name": "j",
		"com.hashicorp.nomad.task_group_name": "g", "com.hashicorp.nomad.task_name": "t",
	}
	got := DeriveLabels(maps.Clone(raw), "/shop-web-1", "k8s.io")
	for k, v := range map[string]string{
		"compose.project": "shop", "compose.service": "web", "nomad.namespace": "default", "nomad.job": "j",
		"nomad.group": "g", "nomad.task": "t", "containerd.namespace": "k8s.io", "container.name": "shop-web-1",
	} {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	// A user's own compose.project on a non-Compose container survives.
	own := DeriveLabels(map[string]string{"compose.project": "mine"}, "x", "")
	if own["compose.project"] != "mine" {
		t.Fatalf("user label overwritten: %v", own)
	}
	if _, ok := own["containerd.namespace"]; ok {
		t.Fatal("containerd.namespace set for a Docker container")
	}
}

func TestIdentityLabelsDefaultExcludes(t *testing.T) {
	labels := map[string]string{
		"app": "web", "compose.project": "shop", "com.docker.compose.project": "shop",
		"com.docker.compose.project.working_dir": "/srv", "com.docker.compose.project.config_files": "x",
		"com.docker.compose.config-hash": "abc", "com.docker.compose.container-number": "1",
		"com.docker.compose.oneoff": "False", "com.docker.compose.replace": "x", "com.docker.compose.version": "1.29",
		"com.docker.compose.image": "sha", "com.docker.compose.depends_on": "", "com.docker.compose.slug": "s",
		"com.hashicorp.nomad.alloc_id": "a", "com.hashicorp.nomad.node_id": "n", "com.hashicorp.nomad.node_name": "n",
		"com.hashicorp.nomad.job_name": "j", "org.opencontainers.image.version": "1", "container.name": "web-1",
	}
	got := IdentityLabels(labels, LabelFilter{})
	want := map[string]string{"app": "web", "compose.project": "shop", "com.docker.compose.project": "shop", "com.hashicorp.nomad.job_name": "j"}
	if !maps.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

func TestLabelFilterIncludeExclude(t *testing.T) {
	labels := map[string]string{"app": "web", "team": "a", "container.name": "web-1", "build": "42",
		"com.docker.compose.config-hash": "h"}
	f, err := NewLabelFilter(nil, []string{"^(build|team)$"})
	if err != nil {
		t.Fatal(err)
	}
	if got := IdentityLabels(labels, f); !maps.Equal(got, map[string]string{"app": "web"}) {
		t.Fatalf("exclude: %v", got)
	}
	// Include brings default-excluded keys back and leaves the rest alone.
	f, _ = NewLabelFilter([]string{`^container\.name$`}, nil)
	want := map[string]string{"app": "web", "team": "a", "build": "42", "container.name": "web-1"}
	if got := IdentityLabels(labels, f); !maps.Equal(got, want) {
		t.Fatalf("include: %v", got)
	}
	// Patterns are unanchored unless they say so, as daemon/config compiles them.
	f, _ = NewLabelFilter(nil, []string{"uil"})
	if f.Relevant("build") {
		t.Fatal("unanchored exclude did not match inside the key")
	}
	// Exclude beats include.
	f, _ = NewLabelFilter([]string{"container"}, []string{"container"})
	if f.Relevant("container.name") {
		t.Fatal("include beat exclude")
	}
}

func TestNewLabelFilterBadPatternNamesItsPlace(t *testing.T) {
	_, err := NewLabelFilter([]string{"ok", "("}, nil)
	var pe *PatternError
	if !errors.As(err, &pe) || pe.List != "include" || pe.Index != 1 {
		t.Fatalf("got %v", err)
	}
	var syn *syntax.Error
	if !errors.As(err, &syn) {
		t.Fatalf("error does not wrap the regexp error: %v", err)
	}
	_, err = NewLabelFilter(nil, []string{"[z-a]"})
	if !errors.As(err, &pe) || pe.List != "exclude" || pe.Index != 0 {
		t.Fatalf("got %v", err)
	}
}
