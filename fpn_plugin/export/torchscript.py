"""TorchScript export of the detector: scripting and tracing (see :mod:`fpn_plugin.export`)."""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.export.flatten import InstancesSchema
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes

from .common import ExportError, check_model, first_line, plain_copy

__all__ = [
    "SCRIPTING_FIELDS",
    "export_scripting",
    "export_tracing",
    "run_scripted",
    "run_traced",
    "tracing_adapter",
    "output_names",
]

#: Every ``Instances`` field the detector's inference creates, with its type (scripting needs them
#: all).
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


class _ScriptableDetector(nn.Module):
    """Returns dicts instead of ``Instances``, which a saved TorchScript model cannot return
    (pytorch issue 46944)."""

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    def forward(self, inputs: Tuple[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


def export_scripting(model: GeneralizedRCNN) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of the detector (through
    ``detectron2.export.scripting_with_instances``).

    The result works on any image size; call it as ``ts(({"image": image},))``. ``model`` itself is
    left unchanged: scripting registers some of its submodules under new names (Detectron2's ResNet
    stages), which would change its ``state_dict`` keys, so a copy is scripted, without the
    execution strategies of :mod:`fpn_plugin.accel` (TorchScript compiles the plain classes).
    """
    path = "TorchScript scripting"
    check_model(model, path)
    try:
        return scripting_with_instances(
            _ScriptableDetector(plain_copy(model)).eval(), SCRIPTING_FIELDS
        )
    except Exception as e:
        raise ExportError(path, first_line(e), "tracing (--export-method tracing)") from e


def tracing_adapter(model: GeneralizedRCNN, image: torch.Tensor) -> TracingAdapter:
    def inference(model, inputs):
        return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]

    # eval(): a new module is in training mode, and torch.onnx.export restores the mode it found
    # on every submodule, which would leave the detector in training mode.
    return TracingAdapter(model, [{"image": image}], inference).eval()


def output_names(adapter: TracingAdapter) -> List[str]:
    """Names of the flattened outputs, known once the adapter has run: the Instances' fields in
    TracingAdapter's (sorted) order, then the image size."""
    schema = adapter.outputs_schema
    while not isinstance(schema, InstancesSchema):
        schema = schema.schemas[0]  # [{"instances": Instances}] -> {"instances": ...} -> Instances
    return list(schema.keys) + ["image_size"]


def export_tracing(
    model: GeneralizedRCNN, image: torch.Tensor
) -> Tuple[torch.jit.ScriptModule, List[str]]:
    """``torch.jit.trace`` of the detector on one (3, H, W) sample image, through
    ``TracingAdapter``.

    Returns the traced model (``traced(image) -> tuple of tensors``) and the names of its outputs.
    Sizes are traced, not frozen, so the model also runs on images of other sizes.
    """
    path = "TorchScript tracing"
    check_model(model, path)
    try:
        adapter = tracing_adapter(plain_copy(model), image)
        with torch.no_grad():
            traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    except Exception as e:
        raise ExportError(
            path, first_line(e), "TorchScript scripting (--export-method scripting)"
        ) from e
    return traced, output_names(adapter)


def run_scripted(ts: torch.jit.ScriptModule, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Detections of a scripted model (from :func:`export_scripting` or ``torch.jit.load``)."""
    with torch.no_grad():
        return dict(ts(({"image": image},))[0])


def run_traced(
    traced: torch.jit.ScriptModule, image: torch.Tensor, names: Sequence[str]
) -> Dict[str, torch.Tensor]:
    """Detections of a traced model, outputs named by ``names``."""
    with torch.no_grad():
        outputs = traced(image)
    return {n: t for n, t in zip(names, outputs) if n != "image_size"}
