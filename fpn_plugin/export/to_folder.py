"""What tools/export_model.py does with an exported model: write it to a folder, load it back,
and check its detections against the eager model's.

Formats: ``torchscript`` (scripting or tracing), ``onnx`` (tracing and the legacy exporter, or
the dynamo exporter from the ``torch.export`` program, :mod:`fpn_plugin.export.onnx_dynamo`),
``pt2`` (``torch.export`` program, ``model.pt2``) and ``aoti`` (AOTInductor package for the CPU,
``model_aoti.pt2``).

The model given is the one the tools run (``FPNTrainer.build_model``: with the execution
strategies of ``MODEL.ACCEL``); each export path exports the plain computation (scripting drops
the strategies from its copy, tracing runs while they step aside), so the check compares the
model as it runs eagerly with the file as it was written.
"""

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import detectron2.data.transforms as T
from detectron2.config import CfgNode
from detectron2.data.detection_utils import read_image
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.meta_arch.retinanet import RetinaNet

from .artefacts import ExportedDetector, compile_aoti, save_program
from .common import ExportError, eager_detections
from .compare import compare_detections
from .onnx import DEFAULT_OPSET, export_onnx, run_onnx
from .onnx_dynamo import DYNAMO_OPSET, export_onnx_dynamo, onnx_session, run_onnx_dynamo
from .panoptic import panoptic_detections
from .program import MAX_IMAGE_SIZE, export_program
from .retinanet import OUTPUT_NAMES as RETINANET_OUTPUTS
from .retinanet import export_retinanet, retinanet_detections
from .torchscript import export_scripting, export_tracing, run_scripted, run_traced

__all__ = [
    "EXPORT_METHODS",
    "FORMATS",
    "load_image",
    "detector_program",
    "export_to_folder",
    "check_exported",
]

EXPORT_METHODS = ("scripting", "tracing")
FORMATS = ("torchscript", "onnx", "pt2", "aoti")
#: Formats that go through torch.export (the export method does not apply).
PROGRAM_FORMATS = ("pt2", "aoti")

#: image (3, H, W) -> the exported model's detections, as :func:`eager_detections` gives them.
RunExported = Callable[[torch.Tensor], Dict[str, torch.Tensor]]


def load_image(cfg: CfgNode, path: Optional[str] = None) -> torch.Tensor:
    """(3, H, W) float32 in ``INPUT.FORMAT``, 0..255, resized as ``DefaultPredictor`` does (shorter
    side ``INPUT.MIN_SIZE_TEST``, 0 for no resize); a fixed random square image of
    ``INPUT.MIN_SIZE_TEST`` pixels if ``path`` is None."""
    if path is None:
        size = cfg.INPUT.MIN_SIZE_TEST
        return torch.rand(3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    image = read_image(path, format=cfg.INPUT.FORMAT)
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = aug.get_transform(image).apply_image(image)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


def export_to_folder(
    model: GeneralizedRCNN,
    image: torch.Tensor,
    output: str,
    method: str = "tracing",
    fmt: str = "torchscript",
    opset: Optional[int] = None,
    onnx_exporter: str = "legacy",
) -> Tuple[str, RunExported, dict]:
    """Exports ``model`` by ``method`` ("scripting" or "tracing", on the sample ``image`` (3, H, W))
    to ``output/model.ts`` or ``output/model.onnx`` (``fmt``: "torchscript" or "onnx"), or by
    ``torch.export`` (``method`` ignored) to ``output/model.pt2`` ("pt2") or
    ``output/model_aoti.pt2`` ("aoti").

    Returns the file's path, a function that runs the file loaded back on an image, and what
    ``export.json`` records about its inputs and outputs. ``ExportError`` for a path that cannot
    work.
    """
    if method not in EXPORT_METHODS or fmt not in FORMATS:
        raise ValueError(
            f"export method {method!r} / format {fmt!r}: use one of {EXPORT_METHODS} / {FORMATS}."
        )
    os.makedirs(output, exist_ok=True)
    if fmt in PROGRAM_FORMATS:
        program, info = detector_program(model, image)
        path = os.path.join(output, "model.pt2" if fmt == "pt2" else "model_aoti.pt2")
        if fmt == "pt2":
            save_program(program, path, info)
        else:
            compile_aoti(program, path, info)
        loaded = ExportedDetector(path)
        return path, loaded, dict(info, input_names=["image"])
    if fmt == "onnx" and onnx_exporter == "dynamo":
        return _export_onnx_dynamo(model, image, output, opset or DYNAMO_OPSET)
    if fmt == "onnx":
        opset = opset or DEFAULT_OPSET
        if method == "scripting":
            raise ExportError(
                "ONNX export by scripting",
                "the ONNX exporters take traced or torch.export programs, not scripted ones",
                "--export-method tracing --format onnx, "
                "or --export-method scripting --format torchscript",
            )
        path = os.path.join(output, "model.onnx")
        names = export_onnx(model, image, path, opset=opset, exporter=onnx_exporter)
        info = {
            "input_names": ["image"],
            "output_names": names,
            "opset": opset,
            "onnx_exporter": onnx_exporter,
        }
        return path, lambda img: run_onnx(path, img), info
    path = os.path.join(output, "model.ts")
    if method == "scripting":
        torch.jit.save(export_scripting(model), path)
        loaded = torch.jit.load(path)
        info = {
            "input": "Tuple[Dict[str, Tensor]]: ({'image': (3, H, W) float32},)",
            "output": "List[Dict[str, Tensor]]",
        }
        return path, lambda img: run_scripted(loaded, img), info
    traced, names = export_tracing(model, image)
    torch.jit.save(traced, path)
    loaded = torch.jit.load(path)
    return (
        path,
        lambda img: run_traced(loaded, img, names),
        {"input_names": ["image"], "output_names": names},
    )


#: The RetinaNet program's outputs under the names of the two-stage detectors' fields.
_RETINANET_FIELDS = {"boxes": "pred_boxes", "scores": "scores", "classes": "pred_classes"}


def detector_program(model, image):
    """The ``torch.export`` program of a two-stage detector (:func:`export_program`) or a
    RetinaNet (:func:`export_retinanet`), and its description (:func:`program_info`'s keys)."""
    if not isinstance(model, RetinaNet):
        return export_program(model, image)
    program = export_retinanet(model, image)
    # export_retinanet's smallest size: every level at least 2 x 2 cells.
    min_size = max(s.stride for s in model.backbone.output_shape().values()) + 1
    info = {
        "output_names": [_RETINANET_FIELDS[n] for n in RETINANET_OUTPUTS],
        "in_channels": 3,
        "min_size": min_size,
        "max_size": MAX_IMAGE_SIZE,
        "size_divisibility": max(1, model.backbone.size_divisibility),
        "input": "image (3, H, W) float32, INPUT.FORMAT, resized as DefaultPredictor does",
    }
    return program, info


def _export_onnx_dynamo(model, image, output, opset):
    """``output/model.onnx`` of the ``torch.export`` program (dynamo exporter, ``opset``)."""
    program, info = detector_program(model, image)
    names = info["output_names"]
    path = os.path.join(output, "model.onnx")
    export_onnx_dynamo(program, path, ["image"], names, opset=opset)
    session = onnx_session(path)

    def run(img):
        return dict(zip(names, run_onnx_dynamo(session, img)))

    return path, run, dict(info, input_names=["image"], onnx_exporter="dynamo", opset=opset)


def check_exported(
    model: GeneralizedRCNN,
    run_exported: RunExported,
    images: Sequence[Tuple[str, torch.Tensor]],
    tolerance: float,
) -> List[dict]:
    """For each (name, (3, H, W) image): :func:`compare_detections` of the eager model's and the
    exported model's detections to ``tolerance`` (pixels for boxes, absolute for scores), with the
    image's ``name`` and ``size`` [H, W] added. Panoptic FPN's eager result is
    :func:`panoptic_detections` (Detectron2's own combination at the input size)."""
    if isinstance(model, RetinaNet):
        eager = retinanet_detections
    elif getattr(model, "sem_seg_head", None) is not None:
        eager = panoptic_detections
    else:
        eager = eager_detections
    checks = []
    for name, image in images:
        result = compare_detections(eager(model, image), run_exported(image), tolerance)
        result.update({"image": name, "size": list(image.shape[1:])})
        checks.append(result)
    return checks
