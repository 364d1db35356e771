"""``torch.export`` of a RetinaNet (Detectron2's ``RetinaNet`` meta-architecture, as the plugin's
configs build it or as Detectron2 builds it from its own config), and its ONNX file.

:class:`RetinaNetExport` runs the model's own backbone, head, anchor generator and box transform;
only the inference steps that ``torch.export`` cannot follow in Detectron2's code are written
again with tensors alone (per level: score threshold and top-k; then the per-class NMS):

- Detectron2 selects the scores above ``SCORE_THRESH_TEST``, then the top ``TOPK_CANDIDATES_TEST``
  of those. Here each level takes its top ``min(TOPK_CANDIDATES_TEST, candidates)`` scores first,
  then keeps those above the threshold: the same detections, with a top-k whose size is known
  from the image size, and one data-dependent size (the kept count) per level.
- The per-class NMS is one ``torchvision::nms`` on boxes shifted apart by class (the "coordinate
  trick" torchvision uses below 1000 boxes), offset by the span of all coordinates so that
  boxes outside the image stay apart too; Detectron2's eager model loops over classes above
  1000 boxes. Both keep the same boxes unless an IoU lies within float32 rounding of
  ``NMS_THRESH_TEST``.

Input: one image (3, H, W) float32 in ``INPUT.FORMAT`` channel order and 0..255, resized as
``DefaultPredictor`` does; any H, W from ``min_size`` to ``max_size`` (the program pads to the
backbone's size divisibility itself, as the eager model does). Output: ``boxes`` (R, 4) XYXY in
the input image's pixels (before the rescale to the original image), ``scores`` (R,),
``classes`` (R,) int64, R <= ``TEST.DETECTIONS_PER_IMAGE`` (data-dependent).
"""

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.modeling.meta_arch.retinanet import RetinaNet

from .common import ExportError, first_line, normalize_and_pad, plain_copy
from .fake_kernels import register_fake_kernels

__all__ = [
    "OUTPUT_NAMES",
    "RetinaNetExport",
    "export_retinanet",
    "retinanet_detections",
    "save_retinanet_onnx",
]

#: Output names of the exported program and of its ONNX file, in order.
OUTPUT_NAMES = ("boxes", "scores", "classes")
_PATH = "torch.export (RetinaNet)"


def batched_nms_offset(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Per-class NMS as one ``torchvision.ops.nms``: kept indices (K,) int64, by decreasing score.

    Boxes (N, 4) XYXY pixels of class c are shifted by c * (span + 1), span the range of all
    coordinates, so boxes of different classes never overlap (also when N = 0: the range then
    includes 0 and no reduction is empty).
    """
    import torchvision

    coords = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)])
    step = coords.max() - coords.min() + 1
    shifted = boxes + (classes.to(boxes.dtype) * step)[:, None]
    return torchvision.ops.nms(shifted, scores, iou_threshold)


class RetinaNetExport(nn.Module):
    """A RetinaNet's inference on one image, with tensors only, for ``torch.export``.

    ``forward(image)``: (3, H, W) float32 -> ``(boxes (R, 4), scores (R,), classes (R,) int64)``,
    the detections of ``model.forward`` in eval mode before ``detector_postprocess`` (boxes in
    the input image's pixels, not clipped, as Detectron2's are until the rescale).
    """

    def __init__(self, model: RetinaNet):
        super().__init__()
        if not isinstance(model, RetinaNet):
            raise ExportError(
                _PATH,
                f"the model is a {type(model).__name__}, not a RetinaNet (MODEL.META_ARCHITECTURE)",
                "the GeneralizedRCNN export for two-stage detectors",
            )
        if model.training:
            raise ExportError(_PATH, "the model is in training mode", "model.eval() first")
        constraints = getattr(model.backbone, "padding_constraints", None) or {}
        if constraints.get("square_size", 0) > 0:
            raise ExportError(
                _PATH,
                f"the backbone pads images to a {constraints['square_size']}-pixel square "
                "(padding_constraints), which the exported program does not",
                "an export with MODEL.FPN.SQUARE_PAD 0, or images padded to the square beforehand",
            )
        self.backbone = model.backbone
        self.head = model.head
        self.anchor_generator = model.anchor_generator
        self.box2box_transform = model.box2box_transform
        self.head_in_features = list(model.head_in_features)
        self.num_classes = int(model.num_classes)
        self.score_thresh = float(model.test_score_thresh)
        self.topk_candidates = int(model.test_topk_candidates)
        self.nms_thresh = float(model.test_nms_thresh)
        self.max_detections = int(model.max_detections_per_image)
        self.size_divisibility = int(
            constraints.get("size_divisibility", model.backbone.size_divisibility)
        )
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone(), persistent=False)

    def _decode_level(
        self, logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One level: (1, A*K, Hi, Wi) logits, (1, A*4, Hi, Wi) deltas, (Hi*Wi*A, 4) anchors ->
        boxes (Ri, 4), scores (Ri,), classes (Ri,), Ri <= TOPK_CANDIDATES_TEST."""
        k = self.num_classes
        scores = permute_to_N_HWA_K(logits, k)[0].sigmoid().flatten()  # (Hi*Wi*A*K,)
        deltas = permute_to_N_HWA_K(deltas, 4)[0]  # (Hi*Wi*A, 4)
        top_scores, top_idx = scores.topk(torch.sym_min(self.topk_candidates, scores.shape[0]))
        keep = top_scores > self.score_thresh
        top_scores, top_idx = top_scores[keep], top_idx[keep]
        anchor_idx = top_idx // k
        boxes = self.box2box_transform.apply_deltas(deltas[anchor_idx], anchors[anchor_idx])
        return boxes, top_scores, top_idx % k

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"image: expected one (3, H, W) image, got shape {tuple(image.shape)}; "
                "give a single image, channels first (HWC arrays: .permute(2, 0, 1))"
            )
        if image.dtype != torch.float32:
            raise ValueError(f"image: expected float32, got {image.dtype}; use image.float()")
        x = normalize_and_pad(image, self.pixel_mean, self.pixel_std, self.size_divisibility)
        features = self.backbone(x)
        features = [features[f] for f in self.head_in_features]
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(features)
        levels = [
            self._decode_level(lg, dl, an.tensor) for lg, dl, an in zip(logits, deltas, anchors)
        ]
        boxes = torch.cat([b for b, _, _ in levels])
        scores = torch.cat([s for _, s, _ in levels])
        classes = torch.cat([c for _, _, c in levels])
        keep = batched_nms_offset(boxes, scores, classes, self.nms_thresh)
        keep = keep[: self.max_detections]
        return boxes[keep], scores[keep], classes[keep]


def export_retinanet(
    model: RetinaNet,
    image: torch.Tensor,
    min_size: Optional[int] = None,
    max_size: int = 4096,
    strict: bool = False,
) -> torch.export.ExportedProgram:
    """``torch.export`` of a RetinaNet's inference (:class:`RetinaNetExport` of a copy of the model
    without :mod:`fpn_plugin.accel`'s strategies), traced on one (3, H, W) sample image.

    Height and width are dynamic, from ``min_size`` (default: the coarsest level's stride + 1, so
    that every level is at least 2 x 2 cells) to ``max_size`` pixels each; the detection count
    is data-dependent. The program pads to the size divisibility itself. Raises
    :class:`ExportError` naming the module and the reason.
    """
    register_fake_kernels()
    wrapper = RetinaNetExport(plain_copy(model)).eval()
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected (3, H, W), got shape {tuple(image.shape)}")
    # A view (e.g. a crop) would be traced with its parent's strides, and the program would then
    # guard on them.
    image = image.contiguous()
    if min_size is None:
        # Every level at least 2 x 2: torch.export specialises sizes of 1.
        strides = [s.stride for s in wrapper.backbone.output_shape().values()]
        min_size = max(strides) + 1
    height = torch.export.Dim("height", min=min_size, max=max_size)
    width = torch.export.Dim("width", min=min_size, max=max_size)
    try:
        with torch.no_grad():
            return torch.export.export(
                wrapper, (image,), dynamic_shapes=({1: height, 2: width},), strict=strict
            )
    except Exception as e:
        raise ExportError(
            _PATH, first_line(e), "Detectron2's tools/deploy/export_model.py (TorchScript tracing)"
        ) from e


def retinanet_detections(model: RetinaNet, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The eager model's detections of one (3, H, W) image before the rescale, as
    ``{"pred_boxes", "scores", "pred_classes"}`` (the form :func:`compare_detections` takes)."""
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        result = model.forward_inference(images, features, model.head(features))[0]
    return {
        "pred_boxes": result.pred_boxes.tensor,
        "scores": result.scores,
        "pred_classes": result.pred_classes,
    }


def save_retinanet_onnx(
    program: torch.export.ExportedProgram, path: str, opset: Optional[int] = None
) -> str:
    """ONNX file ``path`` of an exported RetinaNet (input ``image``, outputs
    :data:`OUTPUT_NAMES`); see :func:`fpn_plugin.export.onnx_dynamo.export_onnx_dynamo`."""
    from .onnx_dynamo import DYNAMO_OPSET, export_onnx_dynamo

    return export_onnx_dynamo(
        program, path, ["image"], list(OUTPUT_NAMES), opset=opset or DYNAMO_OPSET
    )
