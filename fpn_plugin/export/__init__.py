"""Export of the plugin's detector: TorchScript (scripting or tracing) and ONNX, with a check
against eager mode.

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

``torch.export`` (the recommended path; TorchScript is deprecated in torch): :func:`export_program`
gives an ``ExportedProgram`` of the two-stage detectors (Faster, Mask, Keypoint R-CNN, with the
plugin's or Detectron2's RoI heads, and Panoptic FPN) that takes the image (3, H, W) of any height
and width and returns the tuple of tensors named by its ``output_names`` (the fields above,
sorted, plus ``pred_masks`` (R, 1, M, M), ``pred_keypoints`` (R, K, 3) /
``pred_keypoint_heatmaps`` and Panoptic FPN's segments (:mod:`fpn_plugin.export.panoptic`) as
applicable); :func:`save_program` writes it as ``.pt2``, :func:`compile_aoti` as an AOTInductor
package, and :class:`ExportedDetector` loads either with its input checked. See docs/export.md.
"""

from .artefacts import ExportedDetector, compile_aoti, save_program
from .common import ExportError, eager_detections
from .compare import compare_detections
from .onnx import DEFAULT_OPSET, export_onnx, run_onnx
from .program import ExportableRCNN, export_program
from .torchscript import (
    SCRIPTING_FIELDS,
    export_scripting,
    export_tracing,
    run_scripted,
    run_traced,
)

__all__ = [
    "ExportError",
    "SCRIPTING_FIELDS",
    "DEFAULT_OPSET",
    "eager_detections",
    "export_scripting",
    "export_tracing",
    "export_onnx",
    "run_scripted",
    "run_traced",
    "run_onnx",
    "compare_detections",
    "ExportableRCNN",
    "export_program",
    "save_program",
    "compile_aoti",
    "ExportedDetector",
]
