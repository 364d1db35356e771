"""Shared fixtures: Detectron2's built-in R50-FPN and the plugin's, with the same weights."""

import importlib.util
import os
import sys
import types

import pytest
import torch

# detectron2.utils.testing (assert_instances_allclose) imports detectron2.model_zoo, which imports
# pkg_resources at import time; setuptools >= 81 has none. Nothing used here calls it, so an empty
# module stands in for the tests (the plugin itself never imports model_zoo: tests/test_config.py).
if importlib.util.find_spec("pkg_resources") is None:
    sys.modules.setdefault("pkg_resources", types.ModuleType("pkg_resources"))

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

import fpn_plugin  # noqa: F401  (registers the components)
from fpn_plugin.accel import accelerate
from fpn_plugin.config import detectron2_config_file, get_plugin_cfg
from fpn_plugin.utils.testing import make_trained_like

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D2_R50_FPN = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"

torch.set_num_threads(min(2, torch.get_num_threads()))


def d2_cfg(name: str = D2_R50_FPN):
    cfg = get_cfg()
    cfg.merge_from_file(detectron2_config_file(name))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def plugin_cfg(path: str = "configs/fpn_r50.yaml"):
    cfg = get_plugin_cfg()
    cfg.merge_from_file(os.path.join(REPO, path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def build_parity_pair(
    d2_name: str = D2_R50_FPN, path: str = "configs/fpn_r50.yaml", opts=(), accelerated=True
):
    """(Detectron2's built-in model ``d2_name``, the plugin's from ``path``, load_state_dict's
    result), eval mode: Detectron2's with random weights scaled by make_trained_like, the plugin's
    loaded from its state_dict with strict=True, recording ``pred_levels`` and, if ``accelerated``,
    run as the tools run it (``MODEL.ACCEL``'s defaults). ``opts`` (KEY VALUE list) are merged into
    both configs."""
    cfg_ref, cfg_ours = d2_cfg(d2_name), plugin_cfg(path)
    cfg_ref.merge_from_list(list(opts))
    cfg_ours.merge_from_list(list(opts))
    torch.manual_seed(0)
    ref = build_model(cfg_ref).eval()
    make_trained_like(ref)
    ours = build_model(cfg_ours).eval()
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    if hasattr(ours, "roi_heads"):
        ours.roi_heads.pred_levels = True  # the plugin's one extra output field, checked too
    if accelerated:
        accelerate(ours, cfg_ours)
    return ref, ours, result


@pytest.fixture(scope="session")
def r50_pair():
    """(Detectron2's model, the plugin's model as the tools run it), eval mode, the plugin's loaded
    from Detectron2's state_dict."""
    return build_parity_pair()


def load_tool(file_name: str):
    """``tools/<file_name>`` as a module, to call its functions in process: the tools are scripts,
    not a package, so they cannot be imported by name."""
    name = "fpn_tool_" + os.path.splitext(file_name)[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", file_name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def clean_catalog():
    """A list the test adds the dataset names it registers to; they are removed afterwards, as the
    catalogs are process-global and a later test would see them."""
    names = []
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def pytest_configure(config):
    # tests/test_cuda.py: `pytest -m cuda` selects them; without a GPU they are collected and skip.
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU (skipped without one); select with pytest -m cuda"
    )
    # tests/export/test_torch_export.py: compiling an AOTInductor package takes minutes on 2 cores
    # (a C++ compiler builds the whole detector), more than the suite's budget; `pytest -m aoti`
    # runs it.
    config.addinivalue_line(
        "markers", "aoti: compiles an AOTInductor package (minutes); select with pytest -m aoti"
    )


def pytest_collection_modifyitems(config, items):
    # AOTInductor tests run only when selected (pytest -m aoti): see pytest_configure.
    if "aoti" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="compiles an AOTInductor package (minutes); pytest -m aoti")
    for item in items:
        # The marker itself: item.keywords also holds the names of the folders above the test.
        if item.get_closest_marker("aoti") is not None:
            item.add_marker(skip)
