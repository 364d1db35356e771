"""``torch.export`` of the two-stage detectors (Faster, Mask and Keypoint R-CNN, Panoptic FPN):
an ``ExportedProgram`` with dynamic image height and width and a data-dependent detection count.

:class:`ExportableRCNN` runs a ``GeneralizedRCNN``'s own submodules (backbone, RPN head and anchor
generator, box / mask / keypoint heads and predictors, RoI ops) and writes out in tensor form only
the glue that ``torch.export`` cannot follow in Detectron2's inference: the loops over
``Instances``, ``int()`` / ``.item()`` on tensors, the per-level and per-class ``nonzero``, NMS
output sizes, the per-RoI keypoint heatmap resize. Sizes that depend on the data are unbacked
symbols (the fake kernel of ``roi_align`` torchvision registers, and the exact one of ``nms`` in
:mod:`fpn_plugin.export.fake_kernels`, give their output sizes). The same class exports
Detectron2's own ``StandardROIHeads`` / ``ROIPooler`` models and the plugin's
``LevelMappingROIHeads``.

Program input: one image (3, H, W) float32, in ``INPUT.FORMAT``, resized as ``DefaultPredictor``
does; any height and width (padded inside the program as Detectron2 pads). Outputs: a tuple of
tensors named by :attr:`ExportableRCNN.output_names`, the fields of
``model.inference(..., do_postprocess=False)`` in sorted order, as the traced models of
:mod:`fpn_plugin.export.torchscript` return them:

- ``pred_boxes`` (R, 4) float32 XYXY, input-image pixels; ``pred_classes`` (R,) int64;
  ``scores`` (R,) float32; ``pred_levels`` (R,) int64 (the plugin's RoI heads with
  ``MODEL.ROI_HEADS.PRED_LEVELS``);
- Mask R-CNN: ``pred_masks`` (R, 1, M, M) float32 mask probabilities in the box (M = 28 by
  default), to paste with ``detectron2.layers.paste_masks_in_image``;
- Keypoint R-CNN: ``pred_keypoints`` (R, K, 3) float32 (x, y in input-image pixels, score) and
  ``pred_keypoint_heatmaps`` (R, K, S, S) float32 logits;
- Panoptic FPN (a Mask R-CNN with ``sem_seg_head``): also ``panoptic_seg``, ``segment_areas``,
  ``segment_classes``, ``segment_instances`` and ``sem_seg``, Detectron2's panoptic result at the
  input size (:mod:`fpn_plugin.export.panoptic`).
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import StandardROIHeads

from ..modeling.pooler import LevelMappingROIPooler
from .common import ExportError, check_model, first_line, normalize_and_pad, plain_copy
from .fake_kernels import register_fake_kernels
from .panoptic import PANOPTIC_OUTPUTS, PanopticCombination
from .validate import check_image

__all__ = [
    "ExportableRCNN",
    "export_program",
    "program_info",
    "image_dims",
    "min_image_size",
    "heatmaps_to_keypoints",
]

PATH = "torch.export"

#: torchvision's batched_nms runs a per-class loop above this many box coordinates on the CPU and
#: the coordinate-offset trick below it; both are reproduced, as they round IoUs differently.
_VANILLA_NMS_NUMEL = 4000

#: Smallest and largest image height and width (pixels) the exported programs take; a backbone
#: with coarser levels raises the smallest size (:func:`min_image_size`).
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 128, 4096


# Rows are written with index_fill / index_copy, not index_put: index_put broadcasts its values,
# and torch.export would assume a data-dependent row count >= 2 to rule broadcasting out (a
# runtime assertion that fails on an image with a single box in a level or class).


def _batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, num_groups: int, iou: float
) -> torch.Tensor:
    """``torchvision.ops.batched_nms`` (CPU) for ``idxs`` in [0, ``num_groups``) without
    data-dependent Python control flow: both of its algorithms run and the one torchvision would
    pick for this many boxes is kept. Returns the kept indices (K,), by decreasing score."""
    n = boxes.shape[0]
    boxes = boxes.float()
    # Per-group NMS (torchvision's _batched_nms_vanilla over a static range of groups).
    keep_vanilla = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    for group in range(num_groups):
        inds = torch.nonzero(idxs == group).flatten()
        kept = torch.ops.torchvision.nms(boxes[inds], scores[inds], iou)
        keep_vanilla = keep_vanilla.index_fill(0, inds[kept], True)
    # One NMS of boxes moved apart by group (torchvision's _batched_nms_coordinate_trick).
    # boxes.max(), defined for no boxes too (the boxes are clipped: coordinates >= 0).
    max_coordinate = torch.cat((boxes.flatten(), boxes.new_zeros(1))).amax(dim=0)
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    kept = torch.ops.torchvision.nms(boxes + offsets[:, None], scores, iou)
    keep_trick = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep_trick = keep_trick.index_fill(0, kept, True)
    use_vanilla = torch.full((), n * 4, dtype=torch.int64) > _VANILLA_NMS_NUMEL
    # A select of booleans by logical operators (ONNX Runtime has no Where on booleans).
    keep = (use_vanilla & keep_vanilla) | (~use_vanilla & keep_trick)
    keep = torch.nonzero(keep).flatten()
    order = torch.sort(scores[keep], descending=True, stable=True)[1]
    return keep[order]


def _clip(boxes: torch.Tensor, height, width) -> torch.Tensor:
    """``Boxes.clip`` of (R, 4) XYXY boxes to an image of (height, width) pixels."""
    x1 = boxes[:, 0].clamp(min=0, max=width)
    y1 = boxes[:, 1].clamp(min=0, max=height)
    x2 = boxes[:, 2].clamp(min=0, max=width)
    y2 = boxes[:, 3].clamp(min=0, max=height)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def _cubic_weights(src: torch.Tensor, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tap indices and weights of PyTorch's bicubic interpolation (A = -0.75, indices clamped at
    the border) at source coordinates ``src`` (any shape, pixels of an axis of ``size``).
    Returns (indices int64, weights float32), each of shape src.shape + (4,)."""
    a = -0.75
    index = torch.floor(src).clamp(max=size - 1)
    t = (src - index).clamp(0, 1)

    def conv1(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def conv2(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = torch.stack((conv2(t + 1), conv1(t), conv1(1 - t), conv2(2 - t)), dim=-1)
    taps = index.long()[..., None] + torch.arange(-1, 3, device=src.device)
    return taps.clamp(0, size - 1), weights


def heatmaps_to_keypoints(maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """Detectron2's ``heatmaps_to_keypoints`` without its loop over RoIs.

    Each RoI's heatmap is resized (bicubic) to the RoI's size rounded up, as Detectron2 does; here
    all RoIs are resized at once on a grid as large as the largest RoI, positions outside a RoI's
    own size masked out, one keypoint at a time (memory R x H_max x W_max).

    Args:
        maps: (R, K, S, S) keypoint logits.
        rois: (R, 4) XYXY boxes, pixels.
    Returns:
        (R, K, 3): x, y (pixels), score (the resized logit's softmax over the RoI, normalised by the
        S x S heatmap's sum, as Detectron2's).
    """
    num_rois, num_keypoints, size_h, size_w = maps.shape
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_ceil, heights_ceil = widths.ceil(), heights.ceil()
    one = rois.new_ones(1, dtype=torch.int64)
    # The grid width also as a tensor: ONNX has no remainder / division by a data-dependent
    # Python int (the dynamo exporter cannot translate aten.remainder.Scalar of an unbacked size).
    grid_w = torch.cat((widths_ceil.long(), one)).max()
    max_w = grid_w.item()
    max_h = torch.cat((heights_ceil.long(), one)).max().item()
    torch._check(max_w >= 1)
    torch._check(max_h >= 1)
    xs = torch.arange(max_w, dtype=torch.float32, device=maps.device)
    ys = torch.arange(max_h, dtype=torch.float32, device=maps.device)
    # Source coordinate of each output pixel in each RoI: scale * (dst + 0.5) - 0.5,
    # scale = input / output size (float32, as ATen's upsample_bicubic2d computes it).
    src_x = (size_w / widths_ceil)[:, None] * (xs + 0.5) - 0.5  # (R, W_max)
    src_y = (size_h / heights_ceil)[:, None] * (ys + 0.5) - 0.5  # (R, H_max)
    ix, wx = _cubic_weights(src_x, size_w)  # (R, W_max, 4)
    iy, wy = _cubic_weights(src_y, size_h)  # (R, H_max, 4)
    valid = (ys[None, :, None] < heights_ceil[:, None, None]) & (
        xs[None, None, :] < widths_ceil[:, None, None]
    )  # (R, H_max, W_max)
    rows = torch.arange(num_rois, device=maps.device)[:, None, None]
    positions, values = [], []
    for k in range(num_keypoints):
        m = maps[:, k]  # (R, S, S)
        # Along x first (each heatmap row at the output columns), then along y: ATen's order.
        gx = m[rows, :, ix].permute(0, 3, 1, 2)  # (R, W_max, 4, S) -> (R, S, W_max, 4)
        along_x = gx[..., 0] * wx[:, None, :, 0]
        for j in range(1, 4):
            along_x = along_x + gx[..., j] * wx[:, None, :, j]
        gy = along_x[rows, iy]  # (R, H_max, 4, W_max)
        resized = gy[:, :, 0] * wy[:, :, 0, None]
        for j in range(1, 4):
            resized = resized + gy[:, :, j] * wy[:, :, j, None]
        resized = torch.where(valid, resized, torch.full_like(resized, float("-inf")))
        value, pos = resized.flatten(1).max(dim=1)
        positions.append(pos)
        values.append(value)
    pos = torch.stack(positions, dim=1)  # (R, K), in the H_max x W_max grid
    max_score = torch.stack(values, dim=1)  # (R, K)
    x_int = pos % grid_w
    y_int = torch.div(pos - x_int, grid_w, rounding_mode="floor")
    x = (x_int.float() + 0.5) * (widths / widths_ceil)[:, None] + rois[:, 0, None]
    y = (y_int.float() + 0.5) * (heights / heights_ceil)[:, None] + rois[:, 1, None]
    # The resized logit's softmax at its maximum: exp(0) / sum of exp(heatmap - max).
    score = 1.0 / (maps - max_score[:, :, None, None]).exp().sum((2, 3))
    return torch.stack((x, y, score), dim=-1)


class _EvalBatchNorm(nn.Module):
    """An eval-mode ``BatchNorm`` through ATen's inference kernel itself: ``F.batch_norm`` first
    asks whether the batch is empty, which ``torch.export`` cannot answer for a data-dependent
    number of RoIs. Same kernel, same values."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._native_batch_norm_legit_no_training(
            x, self.weight, self.bias, self.running_mean, self.running_var, 0.0, self.eps
        )[0]


def _eval_batch_norms(module: nn.Module) -> None:
    """Replaces, in place, every eval-mode BatchNorm with running statistics in ``module`` by
    :class:`_EvalBatchNorm`."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.track_running_stats:
            setattr(module, name, _EvalBatchNorm(child))
        else:
            _eval_batch_norms(child)


class ExportableRCNN(nn.Module):
    """A ``GeneralizedRCNN``'s inference on one image, written for ``torch.export``.

    ``forward(image)``: image (3, H, W) float32 (``INPUT.FORMAT``, resized as ``DefaultPredictor``
    does), any H and W from :attr:`min_size` to ``MAX_IMAGE_SIZE``, padded inside to multiples
    of :attr:`size_divisibility` as Detectron2 pads; returns the tuple of tensors named by
    :attr:`output_names` (see :mod:`fpn_plugin.export.program`). Its detections are the eager
    model's ``inference([{"image": image}], do_postprocess=False)``. For Panoptic FPN
    (``PanopticFPN``, which needs ``MODEL.MASK_ON``) the semantic head and the combination
    (:class:`~fpn_plugin.export.panoptic.PanopticCombination`) follow: its panoptic outputs are
    those ``PanopticFPN`` gives at the input size
    (:func:`~fpn_plugin.export.panoptic.panoptic_detections`).

    The submodules are the model's own (a copy without the execution strategies of
    :mod:`fpn_plugin.accel`). ``ExportError`` (naming the module and the reason) for a model this
    cannot run.
    """

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        check_model(model, PATH)
        if getattr(model, "sem_seg_head", None) is not None:
            _check_panoptic(model)
        model = plain_copy(model)
        rpn, heads = model.proposal_generator, model.roi_heads
        if rpn is None or not hasattr(rpn, "rpn_head"):
            _refuse(f"proposal_generator ({type(rpn).__name__})", "it is not Detectron2's RPN")
        if not isinstance(heads, StandardROIHeads):
            _refuse(
                f"roi_heads ({type(heads).__name__})",
                "only StandardROIHeads and its subclasses (LevelMappingROIHeads) are supported",
            )
        for name in ("box_pooler", "mask_pooler", "keypoint_pooler"):
            pooler = getattr(heads, name, None)
            if pooler is not None and not isinstance(pooler, (ROIPooler, LevelMappingROIPooler)):
                _refuse(f"roi_heads.{name} ({type(pooler).__name__})", "unknown pooler")
            if pooler is not None and getattr(pooler, "pooler_type", "") == "ROIAlignRotated":
                _refuse(f"roi_heads.{name}", "rotated boxes (ROIAlignRotated) are not supported")
        predictor = heads.box_predictor
        if type(getattr(predictor, "box2box_transform", None)).__name__ != "Box2BoxTransform":
            _refuse(
                "roi_heads.box_predictor", "only FastRCNNOutputLayers' XYXY boxes are supported"
            )
        constraints = getattr(model.backbone, "padding_constraints", {}) or {}
        if constraints.get("square_size", 0):
            _refuse(
                "backbone",
                f"it pads images to squares of {constraints['square_size']} px (square_size)",
            )
        # The RoI heads run on a data-dependent number of RoIs.
        _eval_batch_norms(heads)
        self.backbone = model.backbone
        self.rpn = rpn
        self.roi_heads = heads
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone(), persistent=False)
        #: H and W of the input must be multiples of this (the backbone's size_divisibility).
        self.size_divisibility = max(
            1, model.backbone.size_divisibility, constraints.get("size_divisibility", 0)
        )
        self.in_channels = int(model.pixel_mean.numel())
        #: Smallest H and W the program takes (pixels): see :func:`min_image_size`.
        self.min_size = min_image_size(model.backbone)
        self.mask_on = bool(getattr(heads, "mask_on", False))
        self.keypoint_on = bool(getattr(heads, "keypoint_on", False))
        self.pred_levels = bool(getattr(heads, "pred_levels", False))
        self.num_classes = int(predictor.num_classes)
        #: Panoptic FPN's semantic head (None for the detectors) and its combination with the
        #: instances.
        self.sem_seg_head = getattr(model, "sem_seg_head", None)
        self.combination = None
        if self.sem_seg_head is not None:
            self.combination = PanopticCombination(
                self.sem_seg_head.predictor.out_channels,
                model.combine_overlap_thresh,
                model.combine_stuff_area_thresh,
                model.combine_instances_score_thresh,
            )
        fields = ["pred_boxes", "pred_classes", "scores"]
        if self.pred_levels:
            fields.append("pred_levels")
        if self.mask_on:
            fields.append("pred_masks")
        if self.keypoint_on:
            fields += ["pred_keypoints", "pred_keypoint_heatmaps"]
        if self.sem_seg_head is not None:
            fields += list(PANOPTIC_OUTPUTS)
        #: Names of the outputs, in order (sorted, as TracingAdapter orders Instances fields).
        self.output_names: List[str] = sorted(fields)

    # -- RPN --------------------------------------------------------------------------------------

    def proposals(self, features: Dict[str, torch.Tensor], height, width) -> torch.Tensor:
        """(P, 4) proposal boxes, by decreasing objectness, as Detectron2's RPN gives them at test
        time (``find_top_rpn_proposals`` on one image)."""
        rpn = self.rpn
        feats = [features[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(feats)
        logits, deltas = rpn.rpn_head(feats)
        logits = [s.permute(0, 2, 3, 1).flatten(1) for s in logits]
        box_dim = rpn.anchor_generator.box_dim
        deltas = [
            x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1])
            .permute(0, 3, 4, 1, 2)
            .flatten(1, -2)
            for x in deltas
        ]
        proposals = rpn._decode_proposals(anchors, deltas)
        pre_nms_topk = rpn.pre_nms_topk[False]
        boxes, scores, levels = [], [], []
        for level, (props, logit) in enumerate(zip(proposals, logits)):
            k = torch.sym_min(logit.shape[1], pre_nms_topk)
            top_scores, top_idx = logit[0].topk(k)
            boxes.append(props[0][top_idx])
            scores.append(top_scores)
            levels.append(torch.full_like(top_idx, level))
        boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        # Non-finite boxes or scores dropped, boxes clipped, empty ones dropped.
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes = _clip(boxes, height, width)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = torch.nonzero(finite & (w > rpn.min_box_size) & (h > rpn.min_box_size)).flatten()
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = _batched_nms(boxes, scores, levels, len(proposals), rpn.nms_thresh)
        keep = keep[: rpn.post_nms_topk[False]]
        return boxes[keep]

    # -- RoI heads --------------------------------------------------------------------------------

    @staticmethod
    def pool(pooler: nn.Module, feats: List[torch.Tensor], boxes: torch.Tensor):
        """(R, C, PH, PW) features of (R, 4) boxes of image 0 and the (R,) level index of each
        (offset from the pooler's ``min_level``): ``ROIPooler`` / ``LevelMappingROIPooler`` on one
        image (Eqn. 1 level assignment; RoIs with a non-finite coordinate pool to zeros, as the
        plugin's pooler does)."""
        rois = torch.cat((boxes.new_zeros(boxes.shape[0], 1), boxes), dim=1)
        areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)
        levels = torch.floor(
            pooler.canonical_level
            + torch.log2(torch.sqrt(areas) / float(pooler.canonical_box_size) + 1e-8)
        )
        levels = levels.clamp(min=pooler.min_level, max=pooler.max_level).long() - pooler.min_level
        finite = torch.isfinite(boxes).all(dim=1)
        levels = torch.where(finite, levels, torch.zeros_like(levels))
        pool_levels = torch.where(finite, levels, torch.full_like(levels, -1))
        output = feats[0].new_zeros((rois.shape[0], feats[0].shape[1]) + tuple(pooler.output_size))
        for level, op in enumerate(pooler.level_poolers):
            inds = torch.nonzero(pool_levels == level).flatten()
            output = output.index_copy(0, inds, op(feats[level], rois[inds]))
        return output, levels

    def detect(self, features: Dict[str, torch.Tensor], proposals: torch.Tensor, height, width):
        """Box head on the proposals: (boxes (R, 4), scores (R,), classes (R,), proposal index of
        each detection (R,), level index of each proposal), as ``fast_rcnn_inference``."""
        heads = self.roi_heads
        predictor = heads.box_predictor
        feats = [features[f] for f in heads.box_in_features]
        pooled, levels = self.pool(heads.box_pooler, feats, proposals)
        logits, deltas = predictor(heads.box_head(pooled))
        if getattr(predictor, "use_sigmoid_ce", False):
            probs = logits.sigmoid()
        else:
            probs = F.softmax(logits, dim=-1)
        boxes = predictor.box2box_transform.apply_deltas(deltas, proposals)  # (P, C' * 4)
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(probs).all(dim=1)
        valid = torch.nonzero(finite).flatten()
        boxes, probs = boxes[valid], probs[valid, :-1]
        num_reg = boxes.shape[1] // 4
        boxes = _clip(boxes.reshape(-1, 4), height, width).view(-1, num_reg, 4)
        inds = torch.nonzero(probs > predictor.test_score_thresh)  # (D, 2): proposal, class
        rows, classes = inds[:, 0], inds[:, 1]
        boxes = boxes[rows, 0] if num_reg == 1 else boxes[rows, classes]
        scores = probs[rows, classes]
        keep = _batched_nms(boxes, scores, classes, self.num_classes, predictor.test_nms_thresh)
        if predictor.test_topk_per_image >= 0:
            keep = keep[: predictor.test_topk_per_image]
        return boxes[keep], scores[keep], classes[keep], valid[rows[keep]], levels

    def detections(self, image: torch.Tensor):
        """The detections of one (3, H, W) image ({field name: tensor}, the fields of
        :attr:`output_names` but the panoptic ones) and the backbone's features of the padded
        image."""
        height, width = image.shape[-2], image.shape[-1]
        # Boxes are still clipped to the image's own size, not the padded one.
        x = normalize_and_pad(image, self.pixel_mean, self.pixel_std, self.size_divisibility)
        features = self.backbone(x)
        proposals = self.proposals(features, height, width)
        boxes, scores, classes, index, levels = self.detect(features, proposals, height, width)
        out = {"pred_boxes": boxes, "scores": scores, "pred_classes": classes}
        heads = self.roi_heads
        if self.pred_levels:
            out["pred_levels"] = levels[index] + heads.box_pooler.min_level
        if self.mask_on:
            feats = [features[f] for f in heads.mask_in_features]
            pooled, _ = self.pool(heads.mask_pooler, feats, boxes)
            logits = heads.mask_head.layers(pooled)  # (R, C or 1, M, M)
            if logits.shape[1] == 1:
                logits = logits[:, 0]
            else:
                logits = logits[torch.arange(logits.shape[0]), classes]
            out["pred_masks"] = logits[:, None].sigmoid()
        if self.keypoint_on:
            feats = [features[f] for f in heads.keypoint_in_features]
            pooled, _ = self.pool(heads.keypoint_pooler, feats, boxes)
            heatmaps = heads.keypoint_head.layers(pooled)  # (R, K, S, S)
            out["pred_keypoints"] = heatmaps_to_keypoints(heatmaps, boxes)
            out["pred_keypoint_heatmaps"] = heatmaps
        return out, features

    def semantic(self, features: Dict[str, torch.Tensor], height, width) -> torch.Tensor:
        """(C, H, W) logits of Panoptic FPN's semantic head at the input size: its inference
        (``SemSegFPNHead.layers``, upsampled by ``common_stride`` to the padded size) cropped as
        ``sem_seg_postprocess`` crops it (its resize to the same size leaves the values as they
        are)."""
        head = self.sem_seg_head
        x = head.layers(features)
        x = F.interpolate(x, scale_factor=head.common_stride, mode="bilinear", align_corners=False)
        # A negative pad crops: a slice to an input-dependent size would need a guard torch.export
        # cannot prove.
        return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))[0]

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out, features = self.detections(image)
        if self.sem_seg_head is not None:
            height, width = image.shape[-2], image.shape[-1]
            sem_seg = self.semantic(features, height, width)
            names = PANOPTIC_OUTPUTS[:-1]
            results = self.combination(
                out["pred_boxes"],
                out["scores"],
                out["pred_classes"],
                out["pred_masks"],
                sem_seg.argmax(dim=0),
            )
            out.update(zip(names, results), sem_seg=sem_seg)
        return tuple(out[n] for n in self.output_names)


def _check_panoptic(model: nn.Module) -> None:
    """``ExportError`` for a Panoptic FPN the program does not cover: without masks (Detectron2's
    combination pastes them) or with another semantic head than ``SemSegFPNHead``'s layout."""
    name = type(model).__name__
    if not getattr(model.roi_heads, "mask_on", False):
        raise ExportError(
            PATH,
            f"{name} without instance masks: the panoptic combination needs MODEL.MASK_ON",
            "MODEL.MASK_ON True (Detectron2's PanopticFPN needs it as well)",
        )
    head = model.sem_seg_head
    if not all(hasattr(head, a) for a in ("layers", "common_stride", "predictor")):
        _refuse(
            f"{name}.sem_seg_head ({type(head).__name__})",
            "only SemSegFPNHead's layers / common_stride / predictor are supported",
        )


def _refuse(module: str, reason: str):
    raise ExportError(
        PATH,
        f"{module}: {reason}",
        "TorchScript (--format torchscript) or the legacy ONNX exporter",
    )


def min_image_size(backbone: nn.Module) -> int:
    """Smallest image height and width (pixels) a program of ``backbone`` takes:
    ``MIN_IMAGE_SIZE``, or the coarsest output stride + 1 if larger, so that the coarsest level
    is at least 2 cells wide (129 px for P7, stride 128). torch.export specialises sizes of 1, so
    a dynamic size range that gives a level of one cell is refused ("Constraints violated")."""
    strides = [spec.stride for spec in backbone.output_shape().values()]
    return max([MIN_IMAGE_SIZE] + [int(s) + 1 for s in strides])


def image_dims(
    max_size: int = MAX_IMAGE_SIZE, min_size: int = MIN_IMAGE_SIZE
) -> Tuple[torch.export.Dim, torch.export.Dim]:
    """Height and width dims for ``torch.export``: any size from ``min_size`` (sizes below give
    pyramid levels of one pixel, which the program does not cover; :func:`min_image_size`) to
    ``max_size`` pixels (the program pads to the divisibility itself)."""
    return (
        torch.export.Dim("height", min=min_size, max=max_size),
        torch.export.Dim("width", min=min_size, max=max_size),
    )


def export_program(
    model: GeneralizedRCNN, image: Optional[torch.Tensor] = None
) -> Tuple[torch.export.ExportedProgram, dict]:
    """``torch.export.export`` of the detector's inference on one image (see
    :class:`ExportableRCNN`), H and W dynamic. ``image``: a (3, H, W) sample (default: a random
    one of 4 x 5 times the divisibility; later images may have other sizes).

    Returns the program and what a loader needs to know of it (:func:`program_info`).
    ``ExportError`` naming the module and the reason for a detector that cannot be exported.
    """
    wrapper = ExportableRCNN(model).eval()
    div = wrapper.size_divisibility
    if image is None:
        g = torch.Generator().manual_seed(0)
        image = torch.rand(wrapper.in_channels, 4 * div, 5 * div, generator=g) * 255
    check_image(image, wrapper.in_channels, wrapper.min_size)
    # A view (a crop of a larger image) would make the program guard on its parent's size.
    image = image.contiguous()
    # NMS keeps 0 <= K <= N boxes (torchvision's own fake kernel says K >= 2).
    register_fake_kernels()
    height, width = image_dims(min_size=wrapper.min_size)
    try:
        with torch.no_grad():
            program = torch.export.export(
                wrapper, (image,), dynamic_shapes={"image": {1: height, 2: width}}, strict=False
            )
    except Exception as e:
        raise ExportError(PATH, first_line(e), "TorchScript (--format torchscript)") from e
    return program, program_info(wrapper)


def program_info(wrapper: ExportableRCNN) -> dict:
    """The program's input and outputs, as the artefacts record them (``output_names``,
    ``in_channels``, ``min_size`` / ``max_size`` of H and W, ``size_divisibility``)."""
    return {
        "output_names": list(wrapper.output_names),
        "in_channels": wrapper.in_channels,
        "min_size": wrapper.min_size,
        "max_size": MAX_IMAGE_SIZE,
        "size_divisibility": wrapper.size_divisibility,
        "input": "image (3, H, W) float32, INPUT.FORMAT, resized as DefaultPredictor does",
    }
