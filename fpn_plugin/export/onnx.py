"""ONNX export of the detector, through tracing, and its run by onnxruntime (see
:mod:`fpn_plugin.export`)."""

from typing import Dict, List

import torch

from detectron2.modeling import GeneralizedRCNN

from .common import ExportError, check_model, first_line, plain_copy
from .torchscript import output_names, tracing_adapter

__all__ = ["DEFAULT_OPSET", "export_onnx", "run_onnx"]

#: ONNX opset used by default: RoIAlign with ``aligned=True`` (ROIAlignV2) needs opset >= 16.
DEFAULT_OPSET = 17


def export_onnx(
    model: GeneralizedRCNN,
    image: torch.Tensor,
    f: str,
    opset: int = DEFAULT_OPSET,
    exporter: str = "legacy",
) -> List[str]:
    """ONNX file ``f`` of the detector, traced on one (3, H, W) sample image; returns its output
    names.

    ``exporter``: "legacy" (``torch.onnx.export(dynamo=False)``, TorchScript-based tracing; works)
    or "dynamo" (``torch.export`` of the traced adapter, which Detectron2's data-dependent shapes
    stop; the two-stage detectors' ONNX through ``torch.export`` is
    :func:`fpn_plugin.export.onnx_dynamo.export_onnx_dynamo` of
    :func:`fpn_plugin.export.program.export_program`'s program). Height and width are dynamic
    axes.
    """
    path = f"ONNX ({exporter} exporter)"
    check_model(model, path)
    if exporter not in ("legacy", "dynamo"):
        raise ExportError(path, f"unknown exporter {exporter!r}", "--onnx-exporter legacy")
    if opset < 16 and any(
        getattr(p, "pooler_type", "") == "ROIAlignV2" for p in model.roi_heads.modules()
    ):
        raise ExportError(
            path,
            f"opset {opset} has no half-pixel RoiAlign, which ROIAlignV2 (POOLER_TYPE) needs "
            "(opset >= 16)",
            f"--opset {DEFAULT_OPSET}",
        )
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ExportError(
            path,
            "the 'onnx' package is not installed",
            "pip install onnx onnxruntime (or: pip install -e '.[export]')",
        ) from e
    adapter = tracing_adapter(plain_copy(model), image)
    with torch.no_grad():
        # One eager run: the ONNX graph needs the output names first.
        adapter(*adapter.flattened_inputs)
    names = output_names(adapter)
    try:
        # The legacy exporter takes the variable sizes as dynamic_axes; dynamo derives them.
        dynamic = {}
        if exporter == "legacy":
            axes = {
                "image": {1: "height", 2: "width"},
                **{n: {0: "detections"} for n in names[:-1]},
            }
            dynamic = {"dynamic_axes": axes}
        with torch.no_grad():
            torch.onnx.export(
                adapter,
                adapter.flattened_inputs,
                f,
                dynamo=exporter != "legacy",
                opset_version=opset,
                input_names=["image"],
                output_names=names,
                **dynamic,
            )
    except Exception as e:
        reason = first_line(e)
        if exporter == "dynamo":
            # torch.export needs shapes it can reason about; Detectron2's image padding, proposal
            # top-k and NMS produce data-dependent ones (ExportableRCNN writes them for it).
            reason = f"torch.export cannot follow the detector's data-dependent shapes ({reason})"
            instead = (
                "export_onnx_dynamo of export_program's program (tools/export_model.py "
                "--onnx-exporter dynamo), or exporter='legacy'"
            )
        else:
            instead = "TorchScript tracing or scripting (--format torchscript)"
        raise ExportError(path, reason, instead) from e
    return names


def run_onnx(f: str, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Detections of an ONNX file, run by onnxruntime on CPU."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError(
            "ONNX check",
            "the 'onnxruntime' package is not installed",
            "pip install onnxruntime, or skip the check",
        ) from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(f, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    return {n: torch.from_numpy(o) for n, o in zip(names, outputs) if n != "image_size"}
