# The README's two commands:  `make quickstart`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install quickstart test test-fast bench

install:
	scripts/install.sh $(VENV) dev

quickstart:
	scripts/install.sh $(VENV) smollm2
	$(VENV)/bin/lamo-scale quickstart

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# Container images with podman/buildah (no Docker engine needed): docker/README.md.
#   make images                      base image, CPU image, fast tests inside it
#   make images IMAGES=all           ... and the quickstart inside it, and the GPU image
IMAGES ?= base cpu test
.PHONY: images
images:
	scripts/build-images.sh $(IMAGES)
