# ember — two commands: `make run` and `make test`.
SHELL := /bin/bash
GO ?= go
BIN := bin
export CGO_ENABLED := 0
# Tests share one unpacked guest kernel so each does not download it again.
export EMBER_TEST_CACHE ?= $(CURDIR)/.cache

.PHONY: all build webui browserdeps deps deps-run deps-test deps-bench run stop test unit fuzz e2e bench vet fmt clean testkernel install fresh-check

all: build

# deps installs the host tools (internal/hosttools/table.go) that the
# purposes in DEPS_FOR need, only what is missing: run (default), test,
# bench, tap, fresh-check. Each target below installs what it runs itself.
DEPS_FOR ?= run
DEPS = $(GO) run ./internal/hosttools/cmd/deps
deps:
	@$(DEPS) $(DEPS_FOR)
deps-run:
	@$(DEPS) run
deps-test:
	@$(DEPS) run test tap
deps-bench:
	@$(DEPS) run bench tap

build: webui
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/ember-agent ./cmd/ember-agent
	$(GO) build -trimpath -o $(BIN)/ember ./cmd/ember

# webui: the dashboard's third-party files (xterm.js and its fit add-on),
# fetched by npm from internal/webui's lock file and copied where go:embed
# reads them (internal/webui/static/vendor, git-ignored: nothing from npm
# is committed). A binary built without them serves a page that says so.
WEBUI := internal/webui
# Node trusts its own CA list only; the system's (with the CAs the machine
# adds, such as a TLS-inspecting proxy's) is added for npm's downloads.
export NODE_EXTRA_CA_CERTS ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
webui: $(WEBUI)/static/vendor/xterm.js
$(WEBUI)/static/vendor/xterm.js: $(WEBUI)/package.json $(WEBUI)/package-lock.json
	npm ci --prefix $(WEBUI) --no-audit --no-fund --no-update-notifier --ignore-scripts
	mkdir -p $(WEBUI)/static/vendor
	cp $(WEBUI)/node_modules/@xterm/xterm/css/xterm.css $(WEBUI)/node_modules/@xterm/addon-fit/lib/addon-fit.js $(WEBUI)/static/vendor/
	cp $(WEBUI)/node_modules/@xterm/xterm/lib/xterm.js $@

# browserdeps: npm's playwright-core for the dashboard's browser tests
# (test/browser; they drive Debian's chromium, which make deps-test installs).
browserdeps: test/browser/node_modules/playwright-core/package.json
test/browser/node_modules/playwright-core/package.json: test/browser/package.json test/browser/package-lock.json
	npm ci --prefix test/browser --no-audit --no-fund --no-update-notifier --ignore-scripts
	touch $@

# run: start the daemon (default layout) if it is not running, boot a VM
# from the built-in image and run a command in it.
run: deps-run build
	@bash scripts/run.sh

stop:
	@-$(BIN)/ember rm -f demo >/dev/null 2>&1; pkill -f '^(\./)?$(BIN)/ember daemon' || true

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l cmd internal bench test)" || { gofmt -l cmd internal bench test; echo "gofmt needed"; exit 1; }

# The guest kernel that every test tier boots, fetched once into .cache/.
testkernel:
	@$(GO) run ./test/kernelcache >/dev/null

unit: testkernel
	CGO_ENABLED=1 $(GO) test -race -count=1 $$($(GO) list ./... | grep -v /test/e2e)

# fuzz runs every Fuzz* test (decoders of guest and client bytes: wire
# requests and frames, guest protocol replies, DNS) for FUZZTIME each.
FUZZTIME ?= 8s
fuzz:
	@FUZZTIME=$(FUZZTIME) GO=$(GO) bash scripts/fuzz.sh

e2e: build testkernel browserdeps
	$(GO) test -count=1 -timeout 50m -v ./test/e2e/...

test: deps-test vet unit fuzz e2e

# bench writes BENCHMARKS.md; the tap section needs root (it runs in a
# network namespace made for it) and dnsmasq to compare against.
bench: deps-bench build testkernel browserdeps
	$(GO) run ./bench
	$(GO) run ./bench -hostile
	$(GO) run ./bench -promote -runs 3
	$(GO) run ./bench -memory -runs 3
	$(GO) run ./bench -idle
	$(GO) run ./bench -snapshot
	$(GO) run ./bench -cp -runs 2
	$(GO) run ./bench -images
	$(GO) run ./bench -build -runs 3
	$(GO) run ./bench -web
	@if [ "$$(id -u)" = 0 ]; then \
		$(GO) run ./bench -net; \
		$(GO) run ./bench -portfwd; \
	else echo "bench: skipping the tap section (needs root)"; fi
	@if [ "$$(id -u)" = 0 ]; then \
		$(GO) run ./bench -sandbox; \
	else echo "bench: skipping the QEMU sandbox section (needs root to run QEMU as another user)"; fi

# fresh-check: `make run` from a clean clone of HEAD in a fresh minimal
# Debian 12 root (root only; CI runs it after `make test`). It reports what
# ember's own install step failed to install.
fresh-check:
	@$(MAKE) --no-print-directory deps DEPS_FOR=fresh-check
	@bash scripts/fresh-check.sh

# install puts ember on PATH, the guest agent where the daemon looks, and
# the systemd unit (dist/ember.service) in /etc/systemd/system.
# Installing into this system as root it also creates the `ember` group
# (the default socket_group), as Docker's package does for `docker`: its
# members reach the root daemon's socket; and the `ember-qemu` system user
# (the default qemu_user) that a root daemon runs QEMU as: no home, no
# shell, no files of its own (without it QEMU runs as nobody).
PREFIX ?= /usr/local
install: build
	install -D -m 0755 $(BIN)/ember $(DESTDIR)$(PREFIX)/bin/ember
	install -D -m 0755 $(BIN)/ember-agent $(DESTDIR)$(PREFIX)/lib/ember/ember-agent
	install -d $(DESTDIR)/etc/systemd/system
	sed 's|@PREFIX@|$(PREFIX)|g' dist/ember.service > $(DESTDIR)/etc/systemd/system/ember.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/ember.service
	@echo "installed the systemd unit ember.service; to run the daemon now and at every boot: systemctl daemon-reload && systemctl enable --now ember"
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && ! getent group ember >/dev/null; then \
		groupadd --system ember && echo "created the ember group; let a user reach the daemon with: usermod -aG ember USER"; \
	fi
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && ! getent passwd ember-qemu >/dev/null; then \
		useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ember-qemu && \
		echo "created the ember-qemu user; a root daemon runs QEMU as it"; \
	fi

clean:
	rm -rf $(BIN)
