# `make serve` and `make test` work on a fresh Debian machine with Python 3.11: they install what
# they need (the virtualenv, the package, Debian's PostgreSQL server for the tests) themselves.
PYTHON ?= python3
VENV ?= .venv
DATA ?= data
HOST ?= 127.0.0.1
PORT ?= 8080
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: serve test bench system-packages clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian packages the tests use: PostgreSQL's server (started by the tests themselves), podman with
# runc (the agent's container runtime) and busybox-static (the local test image); one apt-get update.
system-packages:
	@MISSING=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || MISSING="$$MISSING postgresql"; \
	command -v podman >/dev/null 2>&1 || MISSING="$$MISSING podman"; \
	command -v runc >/dev/null 2>&1 || MISSING="$$MISSING runc"; \
	dpkg -s busybox-static >/dev/null 2>&1 || MISSING="$$MISSING busybox-static"; \
	if [ -n "$$MISSING" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$MISSING; \
	fi

serve: $(STAMP)
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

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q

bench: $(STAMP) system-packages
	$(BIN)/python bench/submit.py

clean:
	rm -rf $(VENV) $(DATA)
