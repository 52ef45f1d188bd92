# The two commands: `make run-local` (serve the bundled ONNX example) and `make test` (the test suite).
# Each creates or reuses the virtualenv in .venv/ and installs what it needs (the test extras include the
# `frameworks` extra: PyTorch (CPU build), MLflow, scikit-learn, pandas, pyarrow, for tests/test_frameworks.py).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8888
STATE_DIR ?= .state/iris-onnx

.PHONY: help venv install install-test install-bench wrk haproxy s3 run-local run-cluster examples test test-all bench bench-quick bench-stacks lint clean protos service-unit install-service replica-template install-files install-replicas haproxy-config

help:
	@echo "make run-local   serve examples/onnx on http://$(HOST):$(PORT)"
	@echo "make run-cluster SeaweedFS + $(REPLICAS) replicas + HAProxy on http://$(HOST):$(CLUSTER_PORT) (docs/scaling.md)"
	@echo "make s3          a local S3 (SeaweedFS) on http://127.0.0.1:$(S3_PORT) with a bucket '$(S3_BUCKET)'"
	@echo "make install-replicas PORTS=\"8001 8002\"  one replica per port under systemd (replica@.service)"
	@echo "make haproxy-config SERVERS=\"n1=HOST:PORT ...\"  HAProxy routing each model to its home replica"
	@echo "make test        run the test suite (everything not marked slow)"
	@echo "make test-all    run every test, slow ones included"
	@echo "make bench       run the benchmark suite and write docs/benchmarks.md (15-25 min)"
	@echo "make bench-quick print the hot-path ratio replica / gunicorn + Flask floor (under a minute)"
	@echo "make bench-stacks print the replica against the limit stacks (granian, uvicorn, LitServe, Triton; a few minutes)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamps re-run the install when setup.cfg changes.
$(VENV)/.installed-run: setup.cfg pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[examples]'
	touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test,frameworks]'
	touch $@

$(VENV)/.installed-cluster: setup.cfg pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[cluster]'
	touch $@

$(VENV)/.installed-bench: setup.cfg pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[bench]'
	touch $@

install: $(VENV)/.installed-run
install-test: $(VENV)/.installed-test
install-bench: $(VENV)/.installed-bench

examples: $(VENV)/.installed-run
	$(PY) scripts/build_examples.py --only onnx

run-local: examples
	@echo
	@echo "Serving examples/onnx/api.yaml on http://$(HOST):$(PORT) (Ctrl-C stops). In another terminal:"
	@echo "  curl -s -X POST -H 'Content-Type: application/json' -d @examples/onnx/sample.json http://$(HOST):$(PORT)/"
	@echo
	exec $(VENV)/bin/replica serve examples/onnx/api.yaml --host $(HOST) --port $(PORT) --state-dir $(STATE_DIR)

# Scaling out on one machine: one SeaweedFS, REPLICAS replicas and HAProxy routing each model to its home replica
# (scripts/run_cluster.py prints the curl line; Ctrl-C stops every process it started).
REPLICAS ?= 3
MODELS ?= 9
CLUSTER_PORT ?= 8080
run-cluster: $(VENV)/.installed-cluster haproxy
	$(PY) scripts/run_cluster.py --replicas $(REPLICAS) --models $(MODELS) --port $(CLUSTER_PORT)

# A local S3 for trying the replica against a bucket: SeaweedFS on 127.0.0.1:$(S3_PORT) with one bucket, data
# under $(S3_DIR), the access keys below (Ctrl-C stops it). README "A local S3" shows the rest.
S3_PORT ?= 8333
S3_DIR ?= .s3
S3_BUCKET ?= models
S3_KEY ?= replica-local
S3_SECRET ?= replica-local-secret
s3: $(VENV)/.installed-cluster
	@mkdir -p $(S3_DIR)
	@echo "S3 on http://127.0.0.1:$(S3_PORT), bucket $(S3_BUCKET). In another terminal:"
	@echo "  export AWS_ACCESS_KEY_ID=$(S3_KEY) AWS_SECRET_ACCESS_KEY=$(S3_SECRET) AWS_ENDPOINT_URL=http://127.0.0.1:$(S3_PORT)"
	AWS_ACCESS_KEY_ID=$(S3_KEY) AWS_SECRET_ACCESS_KEY=$(S3_SECRET) exec $(VENV)/bin/weed mini -dir=$(S3_DIR) \
		-ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port=$(S3_PORT) -master.port=9333 -volume.port=8081 \
		-filer.port=8889 -admin.port=23646 -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
		-s3.autoCreateBucket=false -bucket=$(S3_BUCKET)

test: $(VENV)/.installed-test haproxy
	$(PY) -m pytest -m "not slow" -q

test-all: $(VENV)/.installed-test haproxy
	$(PY) -m pytest -q

# The load generator: wrk from the distribution when it can be installed; without it the bench uses locust.
# The peers (MLServer, granian, uvicorn, LitServe, PyTriton) get a virtualenv each under ~/.cache/model-replica/bench-venvs/
# (BENCH_VENV_DIR; their pins clash with the project's and with each other), created by scripts/bench.py on first use.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
wrk:
	@command -v wrk >/dev/null || $(SUDO) apt-get install -y wrk || ($(SUDO) apt-get update && $(SUDO) apt-get install -y wrk) \
		|| echo "wrk could not be installed: the benchmark falls back to locust (FastHttpUser)"

# HAProxy from the distribution: the load balancer of tests/test_cluster.py, `make run-cluster` and the cluster
# benchmark (deploy/haproxy/). Without it those tests are skipped, saying why.
HAPROXY := $(shell command -v haproxy || ls /usr/sbin/haproxy 2>/dev/null)
haproxy:
	@[ -n "$(HAPROXY)" ] || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy || ($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy) \
		|| echo "haproxy could not be installed: the cluster tests will be skipped"

bench: $(VENV)/.installed-bench wrk
	$(PY) scripts/bench.py
	$(PY) scripts/bench_batching.py

bench-quick: $(VENV)/.installed-bench wrk
	$(PY) scripts/bench.py --quick

# Figure 1's 2-process targets and the limit stacks alone, at wrk -c8 and -c64: prints the section, writes nothing
# (the first run installs each stack's virtualenv). NO_STACK="triton" leaves stacks out.
bench-stacks: $(VENV)/.installed-bench wrk
	$(PY) scripts/bench.py --only stacks --rounds 2 --duration 3 --no-doc $(if $(NO_STACK),--no-stack $(NO_STACK))

# The systemd service: `sudo make install-service SPEC=/etc/replica/api.yaml` copies the project into PREFIX with
# its own virtualenv (a path the service user can read: a virtualenv in a home folder often is not), checks that
# the service user can run it, and installs the unit: runs as the system user SERVICE_USER, state in
# /var/lib/replica, settings in /etc/replica/replica.env (see the README). `make service-unit` only renders it.
PREFIX ?= /opt/replica
SPEC ?= $(PREFIX)/examples/onnx/api.yaml
SERVICE_USER ?= replica
UNIT_DIR ?= /etc/systemd/system
BUILD ?= build

service-unit:
	@mkdir -p $(BUILD)
	$(PYTHON) -m deploy.systemd --prefix $(PREFIX) --spec $(abspath $(SPEC)) --user $(SERVICE_USER) > $(BUILD)/replica.service
	@echo "$(BUILD)/replica.service written"

# Several replicas on one host (model caching keeps one process per replica, so a multi-core VM runs one
# replica per core or two): the template unit replica@.service, one instance per port in PORTS, each with its
# own state directory /var/lib/replica/PORT. `make replica-template` only renders it.
PORTS ?= 8001 8002
replica-template:
	@mkdir -p $(BUILD)
	$(PYTHON) -m deploy.systemd --prefix $(PREFIX) --spec $(abspath $(SPEC)) --user $(SERVICE_USER) --template \
		> $(BUILD)/replica@.service
	@echo "$(BUILD)/replica@.service written"

# What both installs share: the service user, the project in PREFIX with its own virtualenv (a path the service
# user can read: a virtualenv in a home folder often is not), the shared environment file.
install-files:
	id -u $(SERVICE_USER) >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin $(SERVICE_USER)
	install -d -m 0755 $(PREFIX)
	cp -r README.md setup.cfg pyproject.toml replica supervisor workers deploy scripts examples $(PREFIX)/
	[ -x $(PREFIX)/.venv/bin/python ] || $(PYTHON) -m venv $(PREFIX)/.venv
	$(PREFIX)/.venv/bin/python -m pip install --quiet '$(PREFIX)[examples]'
	chmod -R a+rX $(PREFIX)
	runuser -u $(SERVICE_USER) -- $(PREFIX)/.venv/bin/replica --version \
		|| { echo "$(SERVICE_USER) cannot run $(PREFIX)/.venv/bin/replica (is the interpreter under a home folder? set PYTHON=/usr/bin/python3)"; exit 1; }
	install -d -m 0755 /etc/replica
	[ -f /etc/replica/replica.env ] || install -m 0640 -g $(SERVICE_USER) scripts/replica.env /etc/replica/replica.env

install-service: service-unit install-files
	install -m 0644 $(BUILD)/replica.service $(UNIT_DIR)/replica.service
	systemd-analyze verify $(UNIT_DIR)/replica.service
	systemctl daemon-reload
	systemctl enable --now replica.service
	@echo "replica.service installed and started: systemctl status replica; journalctl -u replica -f"

install-replicas: replica-template install-files
	install -m 0644 $(BUILD)/replica@.service $(UNIT_DIR)/replica@.service
	systemd-analyze verify $(UNIT_DIR)/replica@$(firstword $(PORTS)).service
	systemctl daemon-reload
	systemctl enable --now $(foreach p,$(PORTS),replica@$(p).service)
	@echo "replica@{$(shell echo $(PORTS) | tr ' ' ',')}.service installed and started: systemctl status 'replica@*'"

# HAProxy in front of replicas that may span hosts, each model routed to its home replica:
#   make haproxy-config SERVERS="vm1-8001=10.0.0.1:8001 vm1-8002=10.0.0.1:8002 vm2-8001=10.0.0.2:8001"
# writes $(BUILD)/haproxy.cfg and checks it with `haproxy -c`; install it as /etc/haproxy/haproxy.cfg.
BIND ?= 0.0.0.0:8080
SERVERS ?= r1=127.0.0.1:8001 r2=127.0.0.1:8002
HAPROXY_ARGS ?=
haproxy-config:
	@mkdir -p $(BUILD)
	$(PYTHON) -m deploy.haproxy.config --bind $(BIND) $(foreach s,$(SERVERS),--server $(s)) $(HAPROXY_ARGS) \
		-o $(BUILD)/haproxy.cfg
	haproxy -c -q -f $(BUILD)/haproxy.cfg
	@echo "$(BUILD)/haproxy.cfg written and checked"

# The gRPC modules workers/protos/inference_pb2.py and inference_pb2_grpc.py, from workers/protos/inference.proto,
# by a virtualenv of their own. grpcio-tools 1.81.1 bundles protoc 33.5, whose code imports with protobuf 6.33.5 and
# later 6.x (setup.cfg pins 6.33.6, as tritonclient needs protobuf < 7); a newer grpcio-tools writes code for
# protobuf 7, which protobuf 6 refuses to import.
PROTOS_VENV := .venv-protos
$(PROTOS_VENV)/bin/python:
	$(PYTHON) -m venv $(PROTOS_VENV)
	$(PROTOS_VENV)/bin/python -m pip install --quiet grpcio-tools==1.81.1 grpcio==1.85.3 protobuf==6.33.6

protos: $(PROTOS_VENV)/bin/python
	$(PROTOS_VENV)/bin/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. workers/protos/inference.proto

clean:
	rm -rf .state .pytest_cache build *.egg-info
