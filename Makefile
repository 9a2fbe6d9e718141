# Two commands do all the set-up on a fresh machine (Python 3.11 + the system packages in the README):
#   make run        virtual environment + pinned requirements, then the app on the default model (http://127.0.0.1:7860)
#   make test       same environment, then the whole test suite (what CI runs)
#   make test-fast  every module's fast tests: no browser, no training (a few minutes)
#   make test-busy  the whole suite with every core kept busy by a spinning process (tools/busy_suite.sh)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
PYTEST_ARGS ?=
# pytest-xdist workers (0: every test in one process); whole modules go to a worker, the browser and slow ones
# first (tests/conftest.py)
JOBS ?= 2
XDIST := -n $(JOBS) --dist loadfile --no-loadscope-reorder

SHARED ?= ../shared
RUN_DIR ?= runs/default_model

.PHONY: venv run test test-fast test-busy browser-deps label-studio-env ultralytics-env peers default-model clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-datumaro.txt requirements-tracking.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -r requirements-datumaro.txt
	$(PY) -m pip install --no-deps -r requirements-tracking.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

run: venv
	$(PY) -m app

test: venv browser-deps
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# Chromium for the browser tests (Debian's package; Playwright drives it, nothing is downloaded by Playwright).
# Installed when running as root with apt-get; otherwise the browser tests skip themselves.
browser-deps:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the browser tests"; \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium install failed: browser tests will skip"; \
	else echo "chromium not found: browser tests will skip (sudo apt-get install chromium)"; fi

# The real Label Studio of tests/app/test_label_studio_live.py: its own venv under the user's cache (its pins clash
# with ours), built once; the test builds it too when missing, and skips only if it cannot be built.
label-studio-env: venv
	$(PY) tools/label_studio_env.py

# Ultralytics YOLO-seg for `python -m bench.peers`: its own venv under the user's cache (nothing goes into ours). It sees
# our venv's packages (the same torch, onnxruntime, openvino, pycocotools) through a .pth file, so pip adds only
# ultralytics and its small dependencies (opencv-python, polars, psutil, ultralytics-thop); no second torch.
ULTRALYTICS_VENV ?= $(HOME)/.cache/condinst-studio/ultralytics-venv
ultralytics-env: venv
	@test -x $(ULTRALYTICS_VENV)/bin/python || $(PY) -m venv $(ULTRALYTICS_VENV)
	$(PY) -c "import site; print(site.getsitepackages()[0])" \
		> $$($(ULTRALYTICS_VENV)/bin/python -c "import site; print(site.getsitepackages()[0])")/condinst-studio-torch.pth
	$(ULTRALYTICS_VENV)/bin/pip install -q ultralytics
	$(ULTRALYTICS_VENV)/bin/python -c "import torch, ultralytics; print('ultralytics', ultralytics.__version__, 'torch', torch.__version__)"

# CondInst vs YOLO-seg vs Mask R-CNN from scratch on fruits_nuts, 8 CPU-minutes each (bench/README.md, "Peers").
peers: ultralytics-env
	$(PY) -m bench.peers --cpu-minutes 8 --minutes 14 --iters 10 --peers condinst,yolov8n-seg,yolo11n-seg,yolov8s-seg,maskrcnn

test-fast: venv
	$(PY) -m pytest -m "not slow and not browser" $(XDIST) $(PYTEST_ARGS)

# Proof that the suite does not race the clock: `make test` while one spinning process per core runs.
test-busy: venv browser-deps
	PY=$(PY) bash tools/busy_suite.sh $(XDIST) $(PYTEST_ARGS)

# Retrain the bundled default model on fruits_nuts (3 held-out images) and package it with its model card.
default-model: venv
	$(PY) tools/split_coco.py --ann $(SHARED)/datasets/fruits_nuts/data/trainval.json --val-ids 15 16 17 --out-dir $(RUN_DIR)/split
	$(PY) -m condinst train --config configs/fruits_nuts_default.json --device cpu --num-workers 1 \
		--train-ann $(RUN_DIR)/split/train.json --train-images $(SHARED)/datasets/fruits_nuts/data/images \
		--val-ann $(RUN_DIR)/split/val.json --val-images $(SHARED)/datasets/fruits_nuts/data/images \
		--output-dir $(RUN_DIR)/train --eval-period 400
	$(PY) tools/package_model.py --checkpoint $(RUN_DIR)/train/model_final.pth --out-dir assets/default_model \
		--val-ann $(RUN_DIR)/split/val.json --val-images $(SHARED)/datasets/fruits_nuts/data/images

clean:
	rm -rf $(VENV) .pytest_cache
