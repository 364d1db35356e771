# Two commands do all the set-up on a fresh machine (see README.md):
#   make quickstart   install everything, then train + evaluate the FPN detector on the embedded data
#   make test         run the test suite (CPU, < 10 minutes on 2 cores)
PYTHON ?= python3
# Where to install Detectron2 from when it is missing: its official repository, or a local
# checkout of it for offline machines (make install DETECTRON2_SRC=/path/to/detectron2).
DETECTRON2_SRC ?= git+https://github.com/facebookresearch/detectron2.git

.PHONY: install quickstart test gpu-wheels gpu-install gpu-check

install:
	$(PYTHON) -m pip install -q "torch>=2.0" "torchvision>=0.15" setuptools wheel ninja
	$(PYTHON) -c "import detectron2" 2>/dev/null || $(PYTHON) -m pip install --no-build-isolation "$(DETECTRON2_SRC)"
	$(PYTHON) -m pip install -q --no-build-isolation -e ".[test]"

quickstart: install
	$(PYTHON) tools/train_net.py --config-file configs/quickstart.yaml

test:
	$(PYTHON) -m pip install -q --no-build-isolation -e ".[test,lint]"
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q -n 2 --dist loadfile tests

# --- The GPU check (docs/gpu.md) --------------------------------------------------------------
#   make gpu-wheels   (a machine with PyPI) puts in .whl/ the wheels, for Python 3.12 on x86-64
#                     Linux, of what Detectron2 and the plugin need beyond a CUDA PyTorch image
#   make gpu-check DETECTRON2_SRC=/path/to/detectron2   (the GPU machine, no network):
#                     gpu-install (Detectron2 from that local copy of its repository, and the
#                     plugin, with those wheels), then tools/gpu_check.py $(GPU_CHECK_ARGS)
GPU_WHEELS ?= .whl
GPU_PYTHON_VERSION ?= 3.12
GPU_CHECK_ARGS ?=
# The versions this project is tested with (Detectron2's setup.py bounds: fvcore < 0.1.6,
# iopath < 0.1.10, omegaconf < 2.4, antlr4 4.9.*); black is in Detectron2's install_requires.
GPU_BINARY_WHEELS = pycocotools==2.0.11 black==26.10.1 pytokens==0.4.1
GPU_PURE_WHEELS = iopath==0.1.9 yacs==0.1.8 termcolor==3.3.0 omegaconf==2.3.1 hydra-core==1.3.8 \
	platformdirs==4.14.8
# Published as source only: built here into (pure-Python) wheels.
GPU_SOURCE_ONLY = fvcore==0.1.5.post20221221 antlr4-python3-runtime==4.9.3
GPU_PLATFORMS = $(foreach p,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,\
	--platform $(p)_x86_64)
OFFLINE_PIP = $(PYTHON) -m pip install --no-build-isolation --no-index --find-links $(GPU_WHEELS)

gpu-wheels:
	mkdir -p $(GPU_WHEELS)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --implementation cp \
		--python-version $(GPU_PYTHON_VERSION) $(GPU_PLATFORMS) -d $(GPU_WHEELS) \
		$(GPU_BINARY_WHEELS) $(GPU_PURE_WHEELS)
	$(PYTHON) -m pip wheel -q --no-deps -w $(GPU_WHEELS) $(GPU_SOURCE_ONLY)
	@du -sh $(GPU_WHEELS); ls $(GPU_WHEELS)

# Without DETECTRON2_SRC, an installed Detectron2 is used (never the default git URL: no network).
ifeq ($(origin DETECTRON2_SRC),file)
GPU_DETECTRON2 = @$(PYTHON) -c "import detectron2" 2>/dev/null || { echo "make gpu-check: \
Detectron2 is not installed; give a local copy of its repository: make gpu-check \
DETECTRON2_SRC=/path/to/detectron2 (installed offline with the wheels of make gpu-wheels)."; exit 2; }
else
GPU_DETECTRON2 = @test -f "$(DETECTRON2_SRC)/setup.py" || { echo "make gpu-check: \
DETECTRON2_SRC=$(DETECTRON2_SRC) has no setup.py: give the folder of a local copy of \
Detectron2's repository."; exit 2; }; echo '$(OFFLINE_PIP) $(DETECTRON2_SRC)'; \
$(OFFLINE_PIP) "$(DETECTRON2_SRC)"
endif

gpu-install:
	$(GPU_DETECTRON2)
	$(OFFLINE_PIP) -q -e ".[test]"

gpu-check: gpu-install
	$(PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS)
