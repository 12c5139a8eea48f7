# DermEdge. `make demo` runs the daemon on bundled sample images; `make test` runs the tests.
# Both create the virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= ../shared/data/ham10000
EXTRA  ?= ../shared/data/isic2017
EVERYDAY ?= ../shared/data/not-lesion/images
# models/DEFAULT is the one place the default model is named
MODEL  ?= models/$(shell cat models/DEFAULT)
RUN    ?=
NAME   ?=
DEMO_PORT ?= 5000
# make gpu-bundle packs GPU_CONFIG's recipe; make train-gpu trains it there for GPU_MINUTES (install,
# measuring and evaluation fit in the rest of the 9 minutes a lent machine's call may take)
GPU_CONFIG  ?= train/configs/edgenet.yaml
GPU_BUNDLE  ?= .gpu-bundle
GPU_MINUTES ?= 6
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PYTHONUNBUFFERED := 1

.PHONY: gate setup setup-device test lint web demo screenshot predict train gpu-bundle train-gpu evaluate gradcam quantize bench bench-quick install-pi check-arm64 clean

$(VENV)/.installed-%: requirements/%.txt requirements/device.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/$*.txt
	touch $@

setup: $(VENV)/.installed-dev             ## everything: training, device, tests
setup-device: $(VENV)/.installed-device   ## the device side only (no TensorFlow)

test: setup lint                          ## lint, then the whole test suite (needs mosquitto, node and chromium installed)
	$(PY) -m pytest -q

lint: setup                               ## ruff, with the rules in pyproject.toml
	$(PY) -m ruff check .

web:                                      ## the browser app in web/dist (served by the device at /app/); needs node and npm
	cd web && npm ci --no-audit --no-fund && npm run build -- --model $(abspath $(MODEL))

demo: setup-device                        ## daemon, headless, on the bundled sample images; page on http://127.0.0.1:$(DEMO_PORT)
	$(PY) -m device demo --model $(MODEL) --http-port $(DEMO_PORT)

screenshot: setup web                     ## docs/device-page.png and docs/web-app.png: the page and the web app in headless Chromium, on the default model
	DERMEDGE_SCREENSHOT=docs/device-page.png $(PY) -m pytest -q tests/device/test_page_browser.py -k token
	cd web/dist && { $(abspath $(PY)) -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 & echo $$! >../.screenshot-server; }
	sleep 1; cd web && node scripts/drive.mjs http://127.0.0.1:8765/ ../device/samples/ISIC_0024475.jpg \
	  --screenshot ../docs/web-app.png >/dev/null; status=$$?; kill $$(cat .screenshot-server); rm -f .screenshot-server; exit $$status

predict: setup-device                     ## classify the sample images once, one JSON line each
	$(PY) -m device predict --model $(MODEL) --json device/samples

train: setup                              ## train edgenet from scratch (make train DATA=path/to/ham10000); the default's recipe: docs/training.md
	$(PY) -m train --config train/configs/edgenet.yaml --data $(DATA)

evaluate: setup                           ## make evaluate RUN=runs/<run>
	$(PY) -m train.evaluate $(RUN) --tta

gradcam: setup                            ## make gradcam RUN=runs/<run>
	$(PY) -m train.gradcam $(RUN)

quantize: setup                           ## make quantize RUN=runs/<run> NAME=<model name>
	$(PY) -m quantize $(RUN) --name $(NAME) --data $(DATA)

gate: setup                               ## refit the not-a-lesion gate into MODEL (default: the default); docs/not-a-lesion.md
	$(PY) -m train.lesion_gate $(MODEL) --data $(DATA) --extra $(EXTRA) --everyday $(EVERYDAY)

gpu-bundle: setup                         ## pack Keras wheels + the data (re-encoded to fit 64 MiB with the tree) for a lent GPU machine: .gpu-bundle/
	$(PY) -m train.gpu_bundle pack --config $(GPU_CONFIG) --data $(DATA) --out $(GPU_BUNDLE)

train-gpu:                                ## ON the lent GPU machine: train the bundle's recipe under JAX for GPU_MINUTES, run packed into $$OUT
	train/gpu_train.sh $(GPU_BUNDLE) $(GPU_MINUTES)

bench: setup                              ## full benchmark run; writes benchmarks/results/
	$(PY) -m benchmarks --data $(DATA)

.PHONY: default-model docs
default-model: setup                      ## rebuild the default's lineage into runs/lineage/models (resumable: run it again to continue)
	$(PY) -m train.lineage train/configs/default/lineage.yaml --data $(DATA) --extra $(EXTRA) --everyday $(EVERYDAY)

docs: setup                               ## regenerate models/README.md, benchmarks/results/README.md and the figures in README.md and docs/
	$(PY) -m quantize.table
	$(PY) -m benchmarks.index
	$(PY) -m docs.build

bench-quick: setup
	$(PY) -m benchmarks --quick

install-pi:                               ## on a Raspberry Pi: install the service (sudo)
	sudo device/systemd/install.sh

check-arm64:                              ## x86 host: the Pi install path in an arm64 Debian root under qemu (slow)
	sudo nice -n 15 device/systemd/check_arm64.sh --model $(MODEL)

clean:
	rm -rf $(VENV) .pytest_cache cache
