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
# Needs ../shared/data; training takes hours on a 2-core CPU, minutes on a GPU.
DEMO_TAR ?= ../shared/data/cifar10-jpg.tar.gz
DEMO_EPOCHS ?= 5
demo: $(STAMP)
	$(PY) resources/demo/build_subset.py $(DEMO_TAR) resources/demo/cifar10_subset.npz
	rm -rf build/cifar10 build/demo-train && mkdir -p build/cifar10 && tar -xzf $(DEMO_TAR) -C build/cifar10
	$(PY) -m studio train cifar:resnet20 --data build/cifar10 --epochs $(DEMO_EPOCHS) --lr 0.1 \
		--schedule onecycle --batch-size 128 --seed 0 --out build/demo-train
	$(PY) resources/demo/install_model.py build/demo-train

clean:
	rm -rf $(VENV) build *.egg-info
