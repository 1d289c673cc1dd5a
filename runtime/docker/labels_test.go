package docker

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/runtime/endpoint"
)

// TestComposeProjectDerivedLabels runs a real two-service project with
// docker-compose and checks the derived compose.* labels and the
// identity-relevant filter on them.
func TestComposeProjectDerivedLabels(t *testing.T) {
	compose := testenv.RequireBinary(t, "docker-compose")
	prefix, label := testRun(t)
	img := testenv.BusyboxImage(t)
	project := prefix + "-shop"
	dir := t.TempDir()
	yml := `version: "3"
services:
  web:
    image: ` + img + `
    command: ["sleep", "300"]
    labels:
      ` + label[:len(testLabel)] + `: "` + label[len(testLabel)+1:] + `"
      app: web
  api:
    image: ` + img + `
    command: ["sleep", "300"]
    labels:
      ` + label[:len(testLabel)] + `: "` + label[len(testLabel)+1:] + `"
      app: api
`
	if err := os.WriteFile(filepath.Join(dir, "docker-compose.yml"), []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	_, c := startSource(t)
	composeCmd := func(args ...string) {
		t.Helper()
		cmd := exec.Command(compose, append([]string{"-p", project}, args...)...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("docker-compose %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() {
		cmd := exec.Command(compose, "-p", project, "down", "-t", "0")
		cmd.Dir = dir
		_ = cmd.Run()
	})
	composeCmd("up", "-d")

	find := func(s map[string]endpoint.Endpoint, service string) (endpoint.Endpoint, bool) {
		for _, ep := range s {
			if ep.Labels["compose.project"] == project && ep.Labels["compose.service"] == service {
				return ep, true
			}
		}
		return endpoint.Endpoint{}, false
	}
	c.WaitFor(t, "both compose services", func(s map[string]endpoint.Endpoint) bool {
		_, a := find(s, "web")
		_, b := find(s, "api")
		return a && b
	})
	state := c.State()
	web, _ := find(state, "web")
	api, _ := find(state, "api")
	for _, ep := range []endpoint.Endpoint{web, api} {
		if len(ep.Interfaces) != 1 || ep.Interfaces[0].Network != project+"_default" || ep.Interfaces[0].HostIfindex == 0 {
			t.Fatalf("compose endpoint interfaces %+v", ep.Interfaces)
		}
		id := endpoint.IdentityLabels(ep.Labels, endpoint.LabelFilter{})
		for _, k := range []string{"com.docker.compose.config-hash", "com.docker.compose.container-number", "com.docker.compose.oneoff",
			"com.docker.compose.version", "com.docker.compose.project.working_dir", "container.name"} {
			if _, ok := id[k]; ok {
				t.Errorf("identity labels keep volatile %s: %v", k, id)
			}
		}
		if _, ok := ep.Labels["com.docker.compose.config-hash"]; !ok {
			t.Errorf("raw labels lack com.docker.compose.config-hash: %v", ep.Labels)
		}
		if id["com.docker.compose.project"] != project || id["compose.project"] != project || id["app"] != ep.Labels["compose.service"] {
			t.Errorf("identity labels %v", id)
		}
	}
	if endpoint.IdentityLabels(web.Labels, endpoint.LabelFilter{})["compose.service"] != "web" {
		t.Errorf("web labels %v", web.Labels)
	}
	composeCmd("down", "-t", "0")
	c.WaitFor(t, "compose endpoints removed", func(s map[string]endpoint.Endpoint) bool {
		_, a := s[web.ID]
		_, b := s[api.ID]
		return !a && !b
	})
}

// TestNomadPauseContainerPattern mimics the Nomad docker driver: a pause
// container owns the netns, task containers join it with network_mode
// container:, and the labels every task shares become the endpoint's.
func TestNomadPauseContainerPattern(t *testing.T) {
	prefix, label := testRun(t)
	img := testenv.BusyboxImage(t)
	_, c := startSource(t)
	alloc := "8d3f3c1a-" + prefix
	pause := docker(t, "run", "-d", "--label", label, "--name", "nomad_init_"+alloc,
		"--label", "com.hashicorp.nomad.alloc_id="+alloc, img, "sleep", "300")
	task := func(name string) string {
		return docker(t, "run", "-d", "--label", label, "--name", name+"-"+alloc, "--network", "container:"+pause,
			"--label", "com.hashicorp.nomad.alloc_id="+alloc,
			"--label", "com.hashicorp.nomad.namespace=default",
			"--label", "com.hashicorp.nomad.job_name=shop",
			"--label", "com.hashicorp.nomad.task_group_name=frontend",
			"--label", "com.hashicorp.nomad.task_name="+name,
			"--label", "com.hashicorp.nomad.node_id=4c2b",
			"--label", "com.hashicorp.nomad.node_name="+prefix,
			img, "sleep", "300")
	}
	t1 := task("web")
	t2 := task("envoy")
	c.WaitFor(t, "pause endpoint with two tasks", func(s map[string]endpoint.Endpoint) bool {
		return len(s[pause].Containers) == 3
	})
	state := c.State()
	ep := state[pause]
	_, own1 := state[t1]
	_, own2 := state[t2]
	if own1 || own2 {
		t.Fatal("task containers got endpoints of their own")
	}
	if len(ep.Interfaces) != 1 || ep.Interfaces[0].HostIfindex == 0 || ep.NetworkMode != endpoint.ModeBridge {
		t.Fatalf("pause endpoint %+v", ep)
	}
	id := endpoint.IdentityLabels(ep.Labels, endpoint.LabelFilter{})
	want := map[string]string{"nomad.namespace": "default", "nomad.job": "shop", "nomad.group": "frontend"}
	for k, v := range want {
		if id[k] != v {
			t.Errorf("identity label %s = %q, want %q (all: %v)", k, id[k], v, id)
		}
	}
	// Tasks disagree on task_name: it is not shared, so not the endpoint's.
	for _, k := range []string{"nomad.task", "com.hashicorp.nomad.alloc_id", "com.hashicorp.nomad.node_id", "com.hashicorp.nomad.node_name"} {
		if _, ok := id[k]; ok {
			t.Errorf("identity labels keep %s: %v", k, id)
		}
	}
	// With one task left, its task name is shared by every joined container.
	docker(t, "rm", "-f", t2)
	c.WaitFor(t, "nomad.task after the second task stops", func(s map[string]endpoint.Endpoint) bool {
		ep := s[pause]
		return len(ep.Containers) == 2 && ep.Labels["nomad.task"] == "web"
	})
}
