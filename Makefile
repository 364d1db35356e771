# Two commands do all the set-up on a fresh machine (see README.md):
#   make quickstart   install everything, then train + evaluate the FPN detector on the embedded data
#   make test         run the test suite (CPU, < 10 minutes on 2 cores)
PYTHON ?= python3
# Where to install Detectron2 from when it is missing: its official repository, or a local
# checkout of it for offline machines (make install DETECTRON2_SRC=/path/to/detectron2).
DETECTRON2_SRC ?= git+https://github.com/facebookresearch/detectron2.git

.PHONY: install quickstart test

install:
	$(PYTHON) -m pip install -q "torch>=2.0" "torchvision>=0.15" setuptools wheel ninja
	$(PYTHON) -c "import detectron2" 2>/dev/null || $(PYTHON) -m pip install --no-build-isolation "$(DETECTRON2_SRC)"
	$(PYTHON) -m pip install -q --no-build-isolation -e ".[test]"

quickstart: install
	$(PYTHON) tools/train_net.py --config-file configs/quickstart.yaml

test:
	$(PYTHON) -m pip install -q --no-build-isolation -e ".[test]"
	$(PYTHON) -m pytest -q tests
