# Membrane. `make run` and `make test` are the two set-up commands of the README:
# both install what they need on a fresh Debian 12 machine (as root) and build.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0-dev)
LDFLAGS   := -X github.com/membrane-fw/membrane/internal/version.Version=$(VERSION)
BIN       := bin
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all build test run bench generate package lint deps docker-up fuzz clean

all: build

deps:
	@hack/deps.sh

docker-up:
	@hack/docker-up.sh

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

test: deps docker-up build
	hack/test.sh

run: deps docker-up build
	hack/run.sh

bench: deps docker-up build
	hack/bench.sh

generate:
	$(GO) generate ./...

package: build
	hack/package.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...

fuzz:
	hack/fuzz.sh

clean:
	rm -rf $(BIN) dist
