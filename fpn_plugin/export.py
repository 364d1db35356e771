"""Export of the plugin's detector: TorchScript (scripting or tracing) and ONNX, with a check against eager mode.

The exported models take one image as the network sees it -- (3, H, W) float32, BGR (or
``INPUT.FORMAT``), already resized as ``DefaultPredictor`` does -- and return its detections
before the final rescale to the original image size, as Detectron2's exported models do:

- ``pred_boxes`` (R, 4) XYXY in the input image's pixels, ``scores`` (R,), ``pred_classes`` (R,)
  int64, ``pred_levels`` (R,) int64: the pyramid level (2 for P2, ...) each detection was
  pooled from (Eqn. 1); R <= ``TEST.DETECTIONS_PER_IMAGE``.
- Scripting: ``model(({"image": image},))`` -> ``[{"pred_boxes": ..., ...}]``.
- Tracing (TorchScript and ONNX): ``model(image)`` -> a tuple of tensors in the order of
  the names :func:`export_tracing` returns (also the ONNX output names):
  ``pred_boxes, pred_classes, pred_levels, scores, image_size``; ``image_size`` is (H, W).

Rescale to the original image with ``detectron2.modeling.postprocessing.detector_postprocess``.
"""
import copy
import math
import re
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.export.flatten import InstancesSchema
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes, Instances

__all__ = [
    "ExportError",
    "SCRIPTING_FIELDS",
    "eager_detections",
    "export_scripting",
    "export_tracing",
    "export_onnx",
    "run_scripted",
    "run_traced",
    "run_onnx",
    "compare_detections",
]

#: Every ``Instances`` field the detector's inference creates, with its type (scripting needs them all).
SCRIPTING_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": torch.Tensor,
    "pred_boxes": Boxes,
    "scores": torch.Tensor,
    "pred_classes": torch.Tensor,
    "pred_levels": torch.Tensor,
    "pred_masks": torch.Tensor,
    "pred_keypoints": torch.Tensor,
    "pred_keypoint_heatmaps": torch.Tensor,
}

#: ONNX opset used by default: RoIAlign with ``aligned=True`` (ROIAlignV2) needs opset >= 16.
DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """An export path that cannot work. ``str()`` names the path, the reason and what to use instead."""

    def __init__(self, path: str, reason: str, instead: str):
        reason = reason.rstrip(". ")
        self.path, self.reason, self.instead = path, reason, instead
        super().__init__(f"{path} cannot export this model: {reason}. Use instead: {instead}.")


def _first_line(e: BaseException) -> str:
    """``Type: first line`` of the innermost cause of ``e`` (exporters wrap the real reason), plain text."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return f"{type(e).__name__}: {line[:300]}"


def _check_model(model: nn.Module, path: str) -> None:
    if not isinstance(model, GeneralizedRCNN):
        raise ExportError(
            path, f"the model is a {type(model).__name__}, this tool exports GeneralizedRCNN (MODEL.META_ARCHITECTURE)",
            "Detectron2's tools/deploy/export_model.py for other meta-architectures",
        )
    if model.training:
        raise ExportError(path, "the model is in training mode", "model.eval() before exporting")


def _fields(instances: Instances) -> Dict[str, torch.Tensor]:
    """Instances -> {field name: tensor}; Boxes become their (R, 4) tensor."""
    return {k: (v.tensor if isinstance(v, Boxes) else v) for k, v in instances.get_fields().items()}


def eager_detections(model: GeneralizedRCNN, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The eager model's detections of one (3, H, W) image, in the same form as the exported models'."""
    with torch.no_grad():
        return _fields(model.inference([{"image": image}], do_postprocess=False)[0])


class _ScriptableDetector(nn.Module):
    """Returns dicts instead of ``Instances``, which a saved TorchScript model cannot return (pytorch issue 46944)."""

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    def forward(self, inputs: Tuple[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


def export_scripting(model: GeneralizedRCNN) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of the detector (through ``detectron2.export.scripting_with_instances``).

    The result works on any image size; call it as ``ts(({"image": image},))``. ``model`` itself is
    left unchanged: scripting registers some of its submodules under new names (Detectron2's ResNet
    stages), which would change its ``state_dict`` keys, so a copy is scripted.
    """
    path = "TorchScript scripting"
    _check_model(model, path)
    try:
        return scripting_with_instances(_ScriptableDetector(copy.deepcopy(model)).eval(), SCRIPTING_FIELDS)
    except Exception as e:
        raise ExportError(path, _first_line(e), "tracing (--export-method tracing)") from e


def _tracing_adapter(model: GeneralizedRCNN, image: torch.Tensor) -> TracingAdapter:
    def inference(model, inputs):
        return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]

    # eval(): a new module is in training mode, and torch.onnx.export restores the mode it found
    # on every submodule, which would leave the detector in training mode.
    return TracingAdapter(model, [{"image": image}], inference).eval()


def _output_names(adapter: TracingAdapter) -> List[str]:
    """Names of the flattened outputs, known once the adapter has run: the Instances' fields in
    TracingAdapter's (sorted) order, then the image size."""
    schema = adapter.outputs_schema
    while not isinstance(schema, InstancesSchema):
        schema = schema.schemas[0]  # [{"instances": Instances}] -> {"instances": ...} -> Instances
    return list(schema.keys) + ["image_size"]


def export_tracing(model: GeneralizedRCNN, image: torch.Tensor) -> Tuple[torch.jit.ScriptModule, List[str]]:
    """``torch.jit.trace`` of the detector on one (3, H, W) sample image, through ``TracingAdapter``.

    Returns the traced model (``traced(image) -> tuple of tensors``) and the names of its outputs.
    Sizes are traced, not frozen, so the model also runs on images of other sizes.
    """
    path = "TorchScript tracing"
    _check_model(model, path)
    try:
        adapter = _tracing_adapter(model, image)
        with torch.no_grad():
            traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    except Exception as e:
        raise ExportError(path, _first_line(e), "TorchScript scripting (--export-method scripting)") from e
    return traced, _output_names(adapter)


def export_onnx(
    model: GeneralizedRCNN, image: torch.Tensor, f: str, opset: int = DEFAULT_OPSET, exporter: str = "legacy"
) -> List[str]:
    """ONNX file ``f`` of the detector, traced on one (3, H, W) sample image; returns its output names.

    ``exporter``: "legacy" (``torch.onnx.export(dynamo=False)``, TorchScript-based tracing; works)
    or "dynamo" (``torch.export``-based). Height and width are dynamic axes.
    """
    path = f"ONNX ({exporter} exporter)"
    _check_model(model, path)
    if exporter not in ("legacy", "dynamo"):
        raise ExportError(path, f"unknown exporter {exporter!r}", "--onnx-exporter legacy")
    if opset < 16 and any(
        getattr(p, "pooler_type", "") == "ROIAlignV2" for p in model.roi_heads.modules()
    ):
        raise ExportError(
            path, f"opset {opset} has no half-pixel RoiAlign, which ROIAlignV2 (POOLER_TYPE) needs (opset >= 16)",
            f"--opset {DEFAULT_OPSET}",
        )
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ExportError(path, "the 'onnx' package is not installed", "pip install onnx onnxruntime (or: pip install -e '.[export]')") from e
    adapter = _tracing_adapter(model, image)
    with torch.no_grad():
        adapter(*adapter.flattened_inputs)  # one eager run: the ONNX graph needs the output names first
    names = _output_names(adapter)
    try:
        with torch.no_grad():
            if exporter == "legacy":
                torch.onnx.export(
                    adapter, adapter.flattened_inputs, f, dynamo=False, opset_version=opset,
                    input_names=["image"], output_names=names,
                    dynamic_axes={"image": {1: "height", 2: "width"}, **{n: {0: "detections"} for n in names[:-1]}},
                )
            else:
                torch.onnx.export(
                    adapter, adapter.flattened_inputs, f, dynamo=True, opset_version=opset,
                    input_names=["image"], output_names=names,
                )
    except Exception as e:
        reason = _first_line(e)
        if exporter == "dynamo":
            # torch.export needs shapes it can reason about; Detectron2's image padding, proposal
            # top-k and NMS produce data-dependent ones.
            reason = f"torch.export cannot follow the detector's data-dependent shapes ({reason})"
            instead = "--onnx-exporter legacy (TorchScript-based ONNX export, which works)"
        else:
            instead = "TorchScript tracing or scripting (--format torchscript)"
        raise ExportError(path, reason, instead) from e
    return names


def run_scripted(ts: torch.jit.ScriptModule, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Detections of a scripted model (from :func:`export_scripting` or ``torch.jit.load``)."""
    with torch.no_grad():
        return dict(ts(({"image": image},))[0])


def run_traced(traced: torch.jit.ScriptModule, image: torch.Tensor, names: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Detections of a traced model, outputs named by ``names``."""
    with torch.no_grad():
        outputs = traced(image)
    return {n: t for n, t in zip(names, outputs) if n != "image_size"}


def run_onnx(f: str, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Detections of an ONNX file, run by onnxruntime on CPU."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError("ONNX check", "the 'onnxruntime' package is not installed", "pip install onnxruntime, or skip the check") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(f, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    return {n: torch.from_numpy(o) for n, o in zip(names, outputs) if n != "image_size"}


def compare_detections(
    ref: Dict[str, torch.Tensor], got: Dict[str, torch.Tensor], tol: float = 1e-3, tie_tol: float = 1e-6
) -> Dict[str, float]:
    """Match exported detections to eager ones and measure their differences.

    Each eager detection is matched to an unmatched exported one of the same class (and level)
    whose box coordinates (pixels) and score differ by at most ``tol``, so that detections with
    near-tied scores may come in another order. Detections left unmatched are accepted only as
    ties at the ``TEST.DETECTIONS_PER_IMAGE`` cut: as many on each side, all scored within
    ``tie_tol`` of their side's lowest score (which of several equal scores is kept is arbitrary).

    Returns ``ok`` (1.0 or 0.0), the counts (``num_eager``, ``num_exported``, ``matched``,
    ``ties_at_cut``) and the largest box (pixels) and score differences of the matches.
    """
    n_ref, n_got = len(ref["scores"]), len(got["scores"])
    rb, gb = ref["pred_boxes"].double(), got["pred_boxes"].double()
    rs, gs = ref["scores"].double(), got["scores"].double()
    same = ref["pred_classes"][:, None] == got["pred_classes"][None, :]
    if "pred_levels" in ref and "pred_levels" in got:
        same &= ref["pred_levels"][:, None] == got["pred_levels"][None, :]
    if n_ref and n_got:
        box_diff = (rb[:, None, :] - gb[None, :, :]).abs().amax(dim=2)
    else:
        box_diff = torch.zeros(n_ref, n_got, dtype=torch.float64)
    score_diff = (rs[:, None] - gs[None, :]).abs()
    candidate = same & (box_diff <= tol) & (score_diff <= tol)
    used_ref = torch.zeros(n_ref, dtype=torch.bool)
    used_got = torch.zeros(n_got, dtype=torch.bool)
    max_box, max_score = 0.0, 0.0
    for i in range(n_ref):
        options = torch.nonzero(candidate[i] & ~used_got).flatten()
        if len(options) == 0:
            continue
        # The closest candidate, by box then score difference.
        j = int(options[torch.argmin(box_diff[i, options] + score_diff[i, options])])
        used_ref[i], used_got[j] = True, True
        max_box = max(max_box, float(box_diff[i, j]))
        max_score = max(max_score, float(score_diff[i, j]))
    matched = int(used_ref.sum())
    left_ref, left_got = rs[~used_ref], gs[~used_got]
    ties = (
        len(left_ref) == len(left_got)
        and bool((left_ref <= rs.min() + tie_tol).all())
        and bool((left_got <= gs.min() + tie_tol).all())
    ) if len(left_ref) or len(left_got) else True
    return {
        "ok": float(n_ref == n_got and ties), "num_eager": n_ref, "num_exported": n_got, "matched": matched,
        "ties_at_cut": len(left_ref) if ties else 0,
        "max_box_diff": max_box if matched else math.nan, "max_score_diff": max_score if matched else math.nan,
    }
