# tinyhost: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test test-py310 demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Test files run in PYTEST_WORKERS processes (pytest-xdist; one file stays in one worker, so a module's virtual
# board is started once). Most of the suite's time is spent waiting on virtual boards at their line rate, not on
# the CPU, so 4 workers finish well ahead of 1 on 2 cores; PYTEST_WORKERS=0 runs everything in one process.
# Tests marked `serial` run first, on their own: the MLPerf runner's VWW flow on the default virtual ESP32, whose
# heap has next to nothing to spare at VWW's peak; beside the other workers the runner found that board at its
# bare REPL. Exit status 5 is pytest's "no test selected" (a TESTS list without serial tests).
PYTEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m serial $(TESTS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile -m "not serial" $(TESTS)

# The command-line tests under the oldest Python tinyhost supports, in their own venv (.venv-py310); needs a
# python3.10 (pyenv's, else the one on PATH) or PYTHON310=/path/to/python3.10. `make test` checks 3.10's syntax
# and standard library from whatever Python it runs on (tests/test_python310.py).
PYTHON310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) python3.10)
CLI_TESTS := tests/test_python310.py tests/test_cli_errors.py tests/test_cli_options.py tests/test_boards.py \
  tests/test_ports.py tests/test_zoo.py tests/test_firmware_image.py tests/test_model_inspect.py tests/test_bench_cli.py
test-py310:
	$(MAKE) test VENV=.venv-py310 PYTHON=$(PYTHON310) TESTS="$(CLI_TESTS)"

# The main job on the virtual board, one real command at a time (each starts the virtual ESP32 that every
# `--board sim` command uses, its flash in ~/.cache/tinyhost/sim/esp32/ or $TINYHOST_STATE_DIR/esp32/, so the README's
# commands find the firmware and model there): firmware and the KWS model flashed (files already there are
# skipped), the board's own report, then an MLPerf-Tiny-style benchmark with a report in out/demo/.
DEMO_SIM := --board sim
demo: $(STAMP)
	$(BIN)/tinyhost flash $(DEMO_SIM) --model kws
	$(BIN)/tinyhost info $(DEMO_SIM)
	$(BIN)/tinyhost bench $(DEMO_SIM) --model kws --dataset models/kws/testset --mode all \
	  --window-s 2 --report out/demo --json out/demo/result.json

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis

# Shipped models (models/kws, models/vww): regenerate data, train, quantise, evaluate (docs/models.md).
# TensorFlow goes into its own venv; the data needs Debian packages (MODEL_PACKAGES), which this target only checks,
# and the Twemoji and OpenMoji images (npm packages, NPM_EMOJI), which it fetches with `npm pack` into build/npm/.
TRAIN_VENV  ?= .venv-train
TRAIN_STAMP := $(TRAIN_VENV)/.installed
MODEL_PACKAGES := espeak-ng sox flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
  fonts-noto-color-emoji unicode-data librsvg2-bin npm
NPM_EMOJI := emoji-datasource-twitter@16.0.0 openmoji@17.0.0
# Leave-one-engine-out models: one per synthesiser, half the shipped model's epochs (time on 2 cores).
LOEO_EPOCHS ?= 32

$(TRAIN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install --quiet --upgrade pip
	$(TRAIN_VENV)/bin/pip install --quiet -e '.[train]'
	touch $(TRAIN_STAMP)

.PHONY: models
models: $(TRAIN_STAMP)
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null && command -v flite >/dev/null \
	  && command -v festival >/dev/null && test -d /usr/share/festival/voices/english/kal_diphone \
	  && test -d /usr/share/festival/voices/english/ked_diphone \
	  && test -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts \
	  && test -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf && test -f /usr/share/unicode/emoji/emoji-test.txt \
	  && command -v rsvg-convert >/dev/null && command -v npm >/dev/null \
	  || { echo "make models needs: apt-get install $(MODEL_PACKAGES)"; exit 1; }
	nice -n 19 $(TRAIN_VENV)/bin/python -m models.pipeline.kws
	for engine in espeak-ng flite festival; do \
	  nice -n 19 $(TRAIN_VENV)/bin/python -m models.pipeline.kws --leave-out $$engine --epochs $(LOEO_EPOCHS) || exit 1; \
	done
	mkdir -p build/npm
	for pkg in $(NPM_EMOJI); do \
	  test -f build/npm/$$(echo $$pkg | tr @ -).tgz || (cd build/npm && npm pack --silent $$pkg) || exit 1; \
	done
	nice -n 19 $(TRAIN_VENV)/bin/python -m models.pipeline.vww
