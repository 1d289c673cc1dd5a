package bpf

import (
	"testing"
)

func TestLoadAndVerify(t *testing.T) {
	h := newHarness(t, 1, Config{})
	if h.dp == nil {
		t.Fatal("no datapath")
	}
}
