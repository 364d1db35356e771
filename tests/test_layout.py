"""The package's layout: the paper in fpn_plugin.modeling, how it is run fast in
fpn_plugin.accel."""

import ast
import inspect
import os

from detectron2.modeling.backbone.fpn import FPN

from fpn_plugin import FPNNeck
from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "fpn_plugin")


def _imports(path):
    """Every module name a Python file imports, relative imports resolved against its package."""
    package = os.path.relpath(os.path.dirname(path), REPO).replace(os.sep, ".")
    names = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            names += [module] + [f"{module}.{a.name}" for a in node.names]
    return names


def test_modeling_imports_nothing_from_the_acceleration_code():
    folder = os.path.join(PACKAGE, "modeling")
    files = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py")]
    assert len(files) >= 8
    for path in files:
        offending = [n for n in _imports(path) if n.startswith("fpn_plugin.accel")]
        assert not offending, (path, offending)
    # The check itself sees such imports.
    assert "fpn_plugin.accel.roi_align" in _imports(
        os.path.join(PACKAGE, "accel", "multilevel_pooler.py")
    )


def test_the_neck_takes_the_architecture_only():
    ours = list(inspect.signature(FPNNeck.__init__).parameters)[1:]
    detectron2s = list(inspect.signature(FPN.__init__).parameters)[1:]
    assert ours[: len(detectron2s)] == detectron2s  # a drop-in: Detectron2's seven, in order
    assert ours[len(detectron2s) :] == [
        "upsample",
        "top_down",
        "lateral",
        "finest_only",
    ]  # the paper's variants
