# The two commands a newcomer types: `make run` and `make test`.
# Both create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test venv clean demo

venv: $(STAMP)

# Reinstall when the project's dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m studio --demo

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

# Rebuild the shipped demo (data subset and weights) from the full CIFAR-10 JPEG copy.
# Needs ../shared/data; training takes about 12 minutes on an H100 and days on a 2-core CPU.
DEMO_TAR ?= ../shared/data/cifar10-jpg.tar.gz
# Two stages, as the shipped weights were made: one-cycle from scratch, then a cosine
# continuation from the first stage's checkpoint.
demo: $(STAMP)
	$(PY) resources/demo/build_subset.py $(DEMO_TAR) resources/demo/cifar10_subset.npz
	rm -rf build/cifar10 build/demo-train build/demo-train-2
	mkdir -p build/cifar10 && tar -xzf $(DEMO_TAR) -C build/cifar10
	$(PY) -m studio train cifar:resnet20 --data build/cifar10 --epochs 60 --lr 0.1 \
		--schedule onecycle --batch-size 128 --seed 0 --out build/demo-train
	$(PY) -m studio train build/demo-train/model.ckpt.pt --data build/cifar10 --epochs 40 --lr 0.05 \
		--schedule cosine --batch-size 128 --seed 1 --out build/demo-train-2
	$(PY) resources/demo/install_model.py build/demo-train-2

clean:
	rm -rf $(VENV) build *.egg-info
