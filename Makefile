# meshca — run `make help` for the targets.
GO        ?= go
BIN       ?= bin/meshca
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
FUZZTIME  ?= 30s
# Bound on minimising each new input: the default 60s can stall a target
# whose inputs are large (several certificates) for most of a short run.
FUZZMINIMIZETIME ?= 5s
BENCHTIME ?= 1s
# testenv: kube-apiserver and etcd for integration tests, built from tools/go.mod.
TESTENV_BIN ?= $(CURDIR)/.testenv/bin
K8S_VERSION := v1.35.4
K8S_LDFLAGS := -s -w -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
               -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=35

.PHONY: help build run test bench fuzz lint lint-tools clean testenv vault peertest benchtest bench-e2e deploy-check

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

build: ## build bin/meshca
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/meshca

run: build ## start a local identity plane (CA on 127.0.0.1, data in .meshca/) and issue a demo SVID
	$(BIN) dev $(ARGS)

test: testenv ## gofmt check, go vet, and all tests with the race detector (integration tests on a real kube-apiserver)
	@unformatted="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

bench: ## issuance benchmarks (in-process, over gRPC) beside the bare x509 cost
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./ca/... 

fuzz: ## run every fuzz target for FUZZTIME each: a duration (10m) or a count of executions (CI: 1000x)
	@set -e; for pkg in $$(grep -rl --include='*_test.go' --exclude-dir=tools '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg; \
	  done; done

lint: lint-tools ## gofmt, go vet, staticcheck and golangci-lint (gosec, errcheck, revive; pinned in tools/lint); govulncheck when its database is reachable
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(TESTENV_BIN)/staticcheck ./...
	$(TESTENV_BIN)/golangci-lint run ./...
	@if $(GO) run golang.org/x/vuln/cmd/govulncheck@latest -version >/dev/null 2>&1 && \
	   $(GO) run golang.org/x/vuln/cmd/govulncheck@latest ./... ; then :; \
	 else echo "govulncheck skipped: tool or vulnerability database not reachable from here"; fi

lint-tools: ## build the pinned linters from tools/lint into .testenv/bin
	@mkdir -p $(TESTENV_BIN)
	cd tools/lint && $(GO) build -mod=readonly -trimpath -o $(TESTENV_BIN)/golangci-lint github.com/golangci/golangci-lint/v2/cmd/golangci-lint
	cd tools/lint && $(GO) build -mod=readonly -trimpath -o $(TESTENV_BIN)/staticcheck honnef.co/go/tools/cmd/staticcheck

clean: ## remove build output (not .meshca/)
	rm -rf bin

testenv: ## build .testenv/bin/{kube-apiserver,etcd} from tools/ (minutes cold, seconds warm); say if PostgreSQL (Debian's postgresql package) is missing
	@mkdir -p $(TESTENV_BIN)
	cd tools && CGO_ENABLED=0 $(GO) build -mod=readonly -trimpath -ldflags '$(K8S_LDFLAGS)' \
	  -o $(TESTENV_BIN)/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
	cd tools && CGO_ENABLED=0 $(GO) build -mod=readonly -trimpath -ldflags '-s -w' -o $(TESTENV_BIN)/etcd ./etcd
	@$(TESTENV_BIN)/kube-apiserver --version
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  echo "testenv: PostgreSQL server binaries not found: the PostgreSQL store tests will skip. Install them with: apt-get install postgresql (.ci/run does)"

vault: $(TESTENV_BIN)/vault ## build .testenv/bin/vault (Vault v1.14.0, for the Vault tests) from tools/vault (about 5 min cold, seconds warm)

$(TESTENV_BIN)/vault: tools/vault/go.mod tools/vault/go.sum tools/vault/build.sh $(wildcard tools/vault/overlay/*.go)
	@mkdir -p $(TESTENV_BIN)
	tools/vault/build.sh $@ $(abspath $(TESTENV_BIN)/../vault-sdk)

deploy-check: testenv ## the Helm chart (tools/deploycheck): render it with the Helm Go SDK, compare with deploy/manifests (DEPLOYCHECK_FLAGS=-update rewrites them), server-side dry-run it and deploy/examples on the real kube-apiserver, run meshca server under the chart's RBAC
	cd tools/deploycheck && $(GO) vet -mod=readonly . && \
	  MESHCA_TESTENV_BIN=$(TESTENV_BIN) $(GO) test -mod=readonly -count=1 . $(DEPLOYCHECK_FLAGS)

benchtest: ## unit tests of the load generator's own logic (tools/bench: load, ratios, reports, the client's timing; not the peer servers)
	cd tools/bench && $(GO) test -mod=readonly -count=1 ./internal/csrapi ./internal/floor ./internal/kube ./internal/load ./internal/proc ./internal/report ./internal/scenario

peertest: ## wire compatibility with Istio's own CA client (istio-agent's), from tools/istiopeer
	cd tools/istiopeer && $(GO) test -count=1 ./...

bench-e2e: testenv build ## end to end, each server its own process: floor, Istio's CA server, meshca server (tools/bench; about 6 min; BENCH_ARGS='-rounds 5 -duration 10s')
	cd tools/bench && $(GO) build -mod=readonly -trimpath -o $(abspath bin/bench) .
	bin/bench -repo $(CURDIR) -meshca $(abspath $(BIN)) -testenv-bin $(TESTENV_BIN) $(BENCH_ARGS)
