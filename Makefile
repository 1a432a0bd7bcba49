# `make serve` and `make test` work on a fresh Debian machine with Python 3.11: they install what
# they need (the virtualenv, the package, podman and a local busybox image, PostgreSQL for the
# tests) themselves.
PYTHON ?= python3
VENV ?= .venv
DATA ?= data
HOST ?= 127.0.0.1
PORT ?= 8080
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
# moto's EC2 server for the tests (tests/services.py: moto_server), in a venv of its own: moto
# brings botocore, which pins python-dateutil<3 and would downgrade the app venv's.
MOTO_VENV ?= .venv-moto
MOTO_VERSION ?= 5.2.5
MOTO_STAMP = $(MOTO_VENV)/.installed-$(MOTO_VERSION)

.PHONY: serve test bench serve-packages system-packages clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(MOTO_STAMP):
	@rm -f $(MOTO_VENV)/.installed-*
	@$(PYTHON) -m venv $(MOTO_VENV)
	@$(MOTO_VENV)/bin/pip install --quiet --disable-pip-version-check 'moto[server]==$(MOTO_VERSION)'
	@touch $(MOTO_STAMP)

# Debian packages: podman with runc (the agent's container runtime), slirp4netns, iproute2 and
# e2fsprogs (each job's own network and disk: provisioner/agent/sandbox.py) and busybox-static (the
# local image) for serving; PostgreSQL's server (started by the tests themselves) for testing too.
SERVE_PACKAGES = podman runc slirp4netns iproute2 e2fsprogs busybox-static
TEST_PACKAGES = $(SERVE_PACKAGES) postgresql openssh-server
define install_missing
	@MISSING=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$MISSING" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$MISSING; \
	fi
endef

serve-packages:
	$(call install_missing,$(SERVE_PACKAGES))

system-packages:
	$(call install_missing,$(TEST_PACKAGES))

serve: $(STAMP) serve-packages
	@$(BIN)/python -m provisioner.local_image docker.io/library/busybox:latest >/dev/null
	@mkdir -p $(DATA)
	@TOKEN=$$($(BIN)/prominence-server token create --user admin --admin --days 30 --data-dir $(DATA)); \
	echo ""; \
	echo "PROMINENCE-compatible service on http://$(HOST):$(PORT)/v1 (state in $(DATA)/)"; \
	echo "Admin token (30 days): $$TOKEN"; \
	echo ""; \
	echo "Try:  curl -H \"Authorization: Bearer $$TOKEN\" http://$(HOST):$(PORT)/v1/jobs"; \
	echo "or:   PROMINENCE_URL=http://$(HOST):$(PORT)/v1 PROMINENCE_TOKEN=$$TOKEN $(BIN)/prominence create --cpus 1 --memory 1 busybox 'echo hello'"; \
	echo ""; \
	exec $(BIN)/prominence-server serve --host $(HOST) --port $(PORT) --data-dir $(DATA)

test: $(STAMP) $(MOTO_STAMP) system-packages
	$(BIN)/python -m pytest -q

bench: $(STAMP) $(MOTO_STAMP) system-packages
	$(BIN)/python bench/submit.py
	$(BIN)/python bench/listing.py
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/burst.py
	$(BIN)/python bench/graphql.py
	$(BIN)/python bench/workflow.py

clean:
	rm -rf $(VENV) $(MOTO_VENV) $(DATA)
