# The two commands of the README:
#   make demo   set up, then run the DeepLabV2 demo (train on synthetic shapes, mIoU with/without CRF)
#   make test   set up, then run the test suite (the command CI runs)
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup demo test

# PyTorch first (the CPU build, only when no torch is installed), then the test tools, then the
# package: `pip install .` compiles deeplabv2_ext._C against that torch (see the README).
setup:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -r requirements-dev.txt
	@echo "make setup: pip install . now compiles the C++ extension deeplabv2_ext._C against the installed"
	@echo "  torch: about 2.5 minutes on 2 cores the first time (a few more with the CUDA kernels), seconds"
	@echo "  when nothing changed; pip shows 'Building wheel ... still running...' meanwhile."
	$(PIP) install .
	deeplabv2 env

demo: setup
	deeplabv2 demo

test: setup
	# the pytest script (not `python -m pytest`), so that the installed package is imported,
	# not the source folder, which has no compiled _C
	pytest tests
