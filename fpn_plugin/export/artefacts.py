"""The ``torch.export`` artefacts of a detector: the ``ExportedProgram`` saved as ``.pt2``
(``torch.export.save``) and the AOTInductor package (``torch._inductor.aoti_compile_and_package``),
and :class:`ExportedDetector`, which loads either and checks its input.

Both files carry the program's input and output description (:func:`program_info`): the ``.pt2``
as the extra file ``fpn_detector.json``, the package as its metadata key ``fpn_detector``.
Neither needs the plugin to run: ``torch.export.load(path).module()(image)`` and
``torch._inductor.aoti_load_package(path)(image)`` (``import torchvision`` first, for its ops);
see docs/export.md.
"""

import json
import os
import zipfile
from typing import Dict, Optional

import torch
import torch._inductor
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from .common import ExportError, first_line
from .fake_kernels import register_fake_kernels
from .validate import check_image

__all__ = [
    "INFO_FILE",
    "INFO_KEY",
    "save_program",
    "compile_aoti",
    "convolves_data_dependent_batch",
    "ExportedDetector",
]

#: Extra file of a saved program that holds its input and output description.
INFO_FILE = "fpn_detector.json"
#: Metadata key of an AOTInductor package that holds the same.
INFO_KEY = "fpn_detector"


def save_program(program: torch.export.ExportedProgram, path: str, info: dict) -> None:
    """``torch.export.save`` of ``program`` to ``path`` (``.pt2``), with ``info``."""
    torch.export.save(program, path, extra_files={INFO_FILE: json.dumps(info)})


# The convolutions of a program before and after its decomposition to core ATen.
_CONVOLUTIONS = (
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv_transpose2d.input,
    torch.ops.aten.convolution.default,
)


def convolves_data_dependent_batch(program: torch.export.ExportedProgram) -> bool:
    """Whether ``program`` runs a convolution over a data-dependent number of inputs (the conv
    box head, the mask and keypoint heads on the detected RoIs): a batch size that is an unbacked
    symbol."""
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target not in _CONVOLUTIONS:
            continue
        value = node.args[0].meta.get("val")
        if value is not None and free_unbacked_symbols(value.shape[0]):
            return True
    return False


def compile_aoti(
    program: torch.export.ExportedProgram,
    path: str,
    info: dict,
    layout_optimization: Optional[bool] = None,
) -> str:
    """AOTInductor package of ``program`` for the CPU at ``path`` (must end in ``.pt2``), with
    ``info`` in its metadata. Compiling takes minutes (C++ compiler).

    The package is frozen (parameters folded in as constants: batch norms folded into the
    convolutions, oneDNN's weights packed once). ``layout_optimization`` (channels-last
    convolutions) defaults to on unless the program convolves a data-dependent number of RoIs
    (:func:`convolves_data_dependent_batch`), where it gives wrong results; ``True`` forces it.
    """
    if layout_optimization is None:
        layout_optimization = not convolves_data_dependent_batch(program)
    # AOTInductor traces the program again: NMS's output size needs the exact kernel.
    register_fake_kernels()
    try:
        return torch._inductor.aoti_compile_and_package(
            program,
            package_path=path,
            inductor_configs={
                "aot_inductor.metadata": {INFO_KEY: json.dumps(info)},
                "freezing": True,
                # With the layout optimisation Inductor stores convolution weights channels-last;
                # ATen's convolution then returns channels-last results, while Inductor plans
                # contiguous ones for a convolution over a data-dependent number of RoIs, and the
                # batch norm / ReLU fused after it reads the wrong elements (docs/export.md).
                "layout_optimization": layout_optimization,
            },
        )
    except Exception as e:
        raise ExportError("AOTInductor", first_line(e), "--format pt2 (torch.export.load)") from e


def _is_aoti_package(path: str) -> bool:
    with zipfile.ZipFile(path) as z:
        return any("/data/aotinductor/" in n for n in z.namelist())


class ExportedDetector:
    """A ``.pt2`` program or AOTInductor package of a detector, loaded, with its input checked.

    ``detector(image)``: image (3, H, W) float32 (``INPUT.FORMAT``, resized as
    ``DefaultPredictor`` does) -> {output name: tensor} (``pred_boxes``, ``scores``,
    ``pred_classes``, ...; see :mod:`fpn_plugin.export.program`). A bad image gets a one-line
    ``ValueError`` naming the input and the fix.
    """

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: no such file; give the .pt2 that tools/export_model.py --format pt2 or "
                "aoti wrote."
            )
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a .pt2 archive (torch.export.save or AOTInductor).")
        self.path = path
        self.kind = "aoti" if _is_aoti_package(path) else "pt2"
        if self.kind == "aoti":
            self.runner = torch._inductor.aoti_load_package(path)
            text = self.runner.get_metadata().get(INFO_KEY)
        else:
            extra = {INFO_FILE: ""}
            self.runner = torch.export.load(path, extra_files=extra).module()
            text = extra[INFO_FILE]
        if not text:
            raise ValueError(
                f"{path}: has no {INFO_FILE} / {INFO_KEY} description; export it with "
                "fpn_plugin.export (tools/export_model.py --format pt2 or aoti)."
            )
        #: The description written at export (:func:`fpn_plugin.export.program.program_info`).
        self.info = json.loads(text)
        self.output_names = list(self.info["output_names"])

    def __call__(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        info = self.info
        check_image(image, info["in_channels"], info["min_size"], info["max_size"])
        with torch.no_grad():
            outputs = self.runner(image.contiguous())
        return dict(zip(self.output_names, outputs))
