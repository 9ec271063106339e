# The two commands of the README:
#   make demo   set up, then run the DeepLabV2 demo (train on synthetic shapes, mIoU with/without CRF)
#   make test   set up, then run the test suite (the command CI runs)
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup demo test

setup:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-build-isolation .

demo: setup
	deeplabv2 demo

test: setup
	# the pytest script (not `python -m pytest`), so that the installed package is imported,
	# not the source folder, which has no compiled _C
	pytest tests
