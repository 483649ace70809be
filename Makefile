# icapwatch — `make help` lists the targets.

GO       ?= go
BIN      ?= bin/icapwatch
DIST     ?= dist
PKG      := github.com/icapwatch/icapwatch
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS  := -s -w -X $(PKG)/internal/version.Version=$(VERSION) -X $(PKG)/internal/version.Revision=$(REVISION)
FUZZTIME ?= 30s
FUZZPKGS := ./icap ./bpf ./agent/observe ./agent/wire ./agent/correlate ./agent/analyze

export PATH := $(PATH):/usr/local/go/bin

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## Install build and test dependencies (Debian packages, Go modules); scripts/deps.sh demo: only the demo's.
	scripts/deps.sh

.PHONY: generate
generate: ## Rebuild the eBPF objects and Go bindings in bpf/ (Debian's clang 14).
	$(GO) generate ./bpf

.PHONY: generate-check
generate-check: generate ## Fail when the committed eBPF objects differ from a fresh build.
	@if [ -n "$$(git status --porcelain -- bpf)" ]; then \
		echo "bpf/: generated files differ from the committed ones; run make generate and commit:"; \
		git status --short -- bpf; git diff --stat -- bpf; exit 1; fi

.PHONY: build
build: ## Build bin/icapwatch (static, version stamped).
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/icapwatch

.PHONY: test
test: ## Run every test with the race detector (privileged tests need root).
	$(GO) test -race -count=1 ./...
	@# Timing against the kernel is checked without the race detector's slowdown.
	$(GO) test -count=1 -run '^TestAttachVeth$$' ./bpf

KERNELS_CACHE ?= .cache/test-kernels

.PHONY: test-kernels
test-kernels: ## Run the bpf tests, icapwatch check and the demo on Debian 12's 6.1 kernel under qemu (no TCX: netlink clsact); downloads into KERNELS_CACHE.
	KERNELS_CACHE=$(KERNELS_CACHE) GO=$(GO) scripts/test-kernels.sh

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 30s).
	@for pkg in $(FUZZPKGS); do \
		for f in $$($(GO) test $$pkg -list '^Fuzz' | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; $(GO) test $$pkg -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) || exit 1; \
		done; \
	done

.PHONY: fixtures
fixtures: ## Record the test captures in agent/analyze/testdata/captures (root; tcpdump, dumpcap).
	$(GO) run ./scripts/fixtures -out agent/analyze/testdata/captures

.PHONY: bench
bench: build ## Measure cost and speed side by side (observer effect, footprint, detection, correlator, analyze vs tshark) into bench-results.md.
	$(GO) run ./scripts/bench -bin $(BIN) -out bench-results.md
	@printf '\n### 3. Correlator, 4. sock_diag and 6. offline analysis (Go benchmarks)\n\n```\n' >> bench-results.md
	$(GO) test -run '^$$' -bench '^Benchmark(Correlator|CorrelatorChurn|Analyze|AnalyzeOpenConns|SockDiag)$$' -benchmem ./agent/... | tee -a bench-results.md
	@printf '```\n\n### 6. icapwatch analyze against tshark\n\n' >> bench-results.md
	scripts/bench-analyze.sh $(BIN) | tee -a bench-results.md
	@if [ "$$(id -u)" = 0 ]; then \
		printf '\n### 2. Kernel cost\n\n```\n' >> bench-results.md; \
		$(BENCH_BPF) | tee -a bench-results.md; \
		printf '```\n' >> bench-results.md; fi
	@echo "results: bench-results.md"

BENCH_BPF = $(GO) test -run '^$$' -bench '^Benchmark(KernelCost|ClassifierRun)$$' -benchtime 20000x -count 3 ./bpf

.PHONY: bench-bpf
bench-bpf: ## Kernel cost: the classifier's ns per packet, watched and unwatched, and per event (root).
	$(BENCH_BPF)

.PHONY: lint
lint: ## gofmt, go vet, staticcheck and a tidy go.mod.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	$(GO) mod tidy -diff

.PHONY: demo
demo: build ## The main job: icapwatch demo, the seed's hang caught live (run as root for eBPF).
	$(BIN) demo

IMAGE ?= ghcr.io/icapwatch/icapwatch:$(VERSION)
ENGINE ?= $(shell command -v docker || command -v podman)
# Packages and the image built without an engine carry the commit's time,
# so that the same commit builds the same files.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)

.PHONY: image
image: ## Build the container image: docker or podman where one runs, else image-dist (ENGINE= forces it).
	@if [ -n "$(ENGINE)" ] && $(ENGINE) info >/dev/null 2>&1; then \
		echo "$(ENGINE) build -t $(IMAGE) ."; \
		$(ENGINE) build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE) . ; \
	else \
		echo "image: no container engine runs here (docker or podman): building with scripts/image"; \
		$(MAKE) --no-print-directory image-dist; \
	fi

.PHONY: image-dist
image-dist: build ## Build the image without an engine: dist/icapwatch-image.tar (docker load, crane push) and dist/icapwatch-oci (skopeo).
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) run ./scripts/image -bin $(BIN) -version $(VERSION) -revision $(REVISION) \
		-name $(IMAGE) -tar $(DIST)/icapwatch-image.tar -oci $(DIST)/icapwatch-oci

.PHONY: package
package: build ## Build the rpm and the deb into dist/ (binary, systemd unit, environment file, man page, completion).
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) run ./scripts/package -bin $(BIN) -version $(VERSION) -out $(DIST)

.PHONY: clean
clean: ## Remove build output.
	rm -rf bin dist
