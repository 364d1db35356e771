"""Panoptic FPN's combination of instances and semantic segmentation, written for ``torch.export``.

Detectron2's ``combine_semantic_and_instance_outputs`` loops over ``Instances`` in Python, reads
scores and areas with ``.item()`` and pastes every mask into the image first
(``detector_postprocess``). :class:`PanopticCombination` gives the same segmentation from
tensors: the instances in order of decreasing score (a stable sort), one ``while_loop`` iteration
per instance scored at least ``instances_score_thresh`` (its mask pasted as Detectron2 pastes it on
the CPU, :func:`paste_mask`, and skipped if empty or overlapping the segments already placed by more
than ``overlap_thresh``), then all the stuff classes in one pass. ``while_loop`` becomes an ONNX
``Loop`` in the dynamo exporter and a loop in the AOTInductor package.

The program's panoptic outputs (:data:`PANOPTIC_OUTPUTS`), for an input image of H x W pixels and
S segments:

- ``panoptic_seg`` (H, W) int32: the segment id of each pixel, 1..S, 0 for none;
- ``segment_areas`` (S,) int64: pixels of each segment (segment id k is row k - 1);
- ``segment_classes`` (S,) int64: its category id (``pred_classes`` of a thing, the semantic label
  of stuff, as Detectron2's ``category_id``);
- ``segment_instances`` (S,) int64: the detection (row of the program's ``pred_boxes``, ...) a
  thing segment comes from, -1 for stuff;
- ``sem_seg`` (C, H, W) float32: the semantic head's logits at the input size (label 0 is
  "things" in Panoptic FPN).

:func:`segments_info` turns them into Detectron2's ``(panoptic_seg, segments_info)``;
:func:`panoptic_detections` is the eager model's result in the same form.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import Boxes

from .common import fields

__all__ = [
    "PANOPTIC_OUTPUTS",
    "paste_mask",
    "PanopticCombination",
    "panoptic_detections",
    "segments_info",
]

PANOPTIC_OUTPUTS = (
    "panoptic_seg",
    "segment_areas",
    "segment_classes",
    "segment_instances",
    "sem_seg",
)

#: Detectron2's threshold of pasted mask probabilities (``detector_postprocess``).
MASK_THRESHOLD = 0.5


def paste_mask(mask: torch.Tensor, box: torch.Tensor, height, width) -> torch.Tensor:
    """One mask pasted into the image, as ``paste_masks_in_image`` pastes it on the CPU (one mask
    at a time, ``skip_empty``): bilinear ``grid_sample`` of the mask at the pixel centres, inside
    the box's integer window only (floor(x0) - 1 .. ceil(x1) + 1, clamped to the image), then
    thresholded at 0.5.

    The samples are taken over the whole image and the window is a mask on them (no
    data-dependent crop): each pixel's grid coordinate is computed by the same operations as
    Detectron2's, so the values are the same bit for bit.

    Args:
        mask: (M, M) float32 probabilities in the box.
        box: (4,) XYXY box, pixels.
        height, width: the image's size, pixels.
    Returns:
        (height, width) bool.
    """
    x0, y0, x1, y1 = box[0], box[1], box[2], box[3]
    xs = torch.arange(width, dtype=torch.float32, device=mask.device)
    ys = torch.arange(height, dtype=torch.float32, device=mask.device)
    gx = (xs + 0.5 - x0) / (x1 - x0) * 2 - 1
    gy = (ys + 0.5 - y0) / (y1 - y0) * 2 - 1
    grid = torch.stack(
        (gx[None, :].expand(height, width), gy[:, None].expand(height, width)), dim=-1
    )
    pasted = F.grid_sample(mask[None, None].float(), grid[None], align_corners=False)[0, 0]
    # Detectron2's window: the box's bounds widened by one pixel, clamped to the image.
    left = (x0.floor() - 1).clamp(min=0)
    top = (y0.floor() - 1).clamp(min=0)
    right = (x1.ceil() + 1).clamp(max=width)
    bottom = (y1.ceil() + 1).clamp(max=height)
    window = ((ys >= top) & (ys < bottom))[:, None] & ((xs >= left) & (xs < right))[None, :]
    return (pasted >= MASK_THRESHOLD) & window


class PanopticCombination(nn.Module):
    """Detectron2's ``combine_semantic_and_instance_outputs`` on tensors, for ``torch.export``.

    Things: the detections sorted by decreasing score (stable: equal scores stay in detection
    order); one ``while_loop`` iteration for each scored at least ``instances_score_thresh``. Its
    pasted mask (:func:`paste_mask`) is skipped if empty, if its box is empty (Detectron2's
    ``detector_postprocess`` drops such detections before combining), or if more than
    ``overlap_thresh`` of it is already covered; otherwise it gets the next segment id on the
    pixels not yet covered. Stuff: every semantic label but 0 ("things") present in the image
    whose still uncovered pixels number at least ``stuff_area_thresh`` gets the next ids, by
    increasing label, in one pass.

    ``forward(pred_boxes, scores, pred_classes, pred_masks, semantic)``: boxes (R, 4) XYXY pixels,
    scores (R,), classes (R,) int64, masks (R, 1, M, M) probabilities in the box, semantic (H, W)
    int64 labels in [0, C) (the argmax of the semantic logits); returns ``panoptic_seg``,
    ``segment_areas``, ``segment_classes``, ``segment_instances`` (see
    :mod:`fpn_plugin.export.panoptic`).
    """

    def __init__(
        self,
        num_classes: int,
        overlap_thresh: float,
        stuff_area_thresh: float,
        instances_score_thresh: float,
    ):
        super().__init__()
        #: Semantic classes C (label 0: things).
        self.num_classes = int(num_classes)
        self.overlap_thresh = float(overlap_thresh)
        self.stuff_area_thresh = stuff_area_thresh
        self.instances_score_thresh = float(instances_score_thresh)

    def things(self, boxes, scores, masks, height, width):
        """(panoptic_seg (H, W) int32 of the thing segments, segment id of each detection (R,)
        int64 (0: none), pixels of its segment (R,) int64)."""
        num = boxes.shape[0]
        order = torch.sort(scores, descending=True, stable=True)[1]
        # Scores compared as Python floats, as Detectron2's ``.item()``.
        count = (scores.double() >= self.instances_score_thresh).sum()
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        overlap_thresh = self.overlap_thresh

        def cond(i, last_id, panoptic, segment_of, area_of):
            return i < count

        def body(i, last_id, panoptic, segment_of, area_of):
            r = order.index_select(0, i.reshape(1))  # (1,)
            box = boxes.index_select(0, r)[0]
            mask = paste_mask(masks.index_select(0, r)[0, 0], box, height, width)
            area = mask.sum()
            covered = (mask & (panoptic > 0)).sum()
            skip = (
                (area == 0)
                | ~nonempty.index_select(0, r)[0]
                | (covered.double() / area.double().clamp(min=1) > overlap_thresh)
            )
            new_id = last_id + (~skip).long()
            pixels = mask & (panoptic == 0) & ~skip
            panoptic = torch.where(pixels, new_id.int(), panoptic)
            segment = torch.where(skip, torch.zeros_like(new_id), new_id)
            segment_of = segment_of.index_copy(0, r, segment.reshape(1))
            area_of = area_of.index_copy(0, r, pixels.sum().reshape(1))
            return i + 1, new_id, panoptic, segment_of, area_of

        carried = (
            torch.zeros((), dtype=torch.int64, device=boxes.device),
            torch.zeros((), dtype=torch.int64, device=boxes.device),
            torch.zeros(height, width, dtype=torch.int32, device=boxes.device),
            torch.zeros(num, dtype=torch.int64, device=boxes.device),
            torch.zeros(num, dtype=torch.int64, device=boxes.device),
        )
        _, _, panoptic, segment_of, area_of = torch.while_loop(cond, body, carried)
        return panoptic, segment_of, area_of

    def forward(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        classes: torch.Tensor,
        masks: torch.Tensor,
        semantic: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        height, width = semantic.shape[-2], semantic.shape[-1]
        panoptic, segment_of, area_of = self.things(boxes, scores, masks, height, width)
        # Thing segments by id (ids follow the score order, not the detection order).
        placed = torch.nonzero(segment_of > 0).flatten()
        placed = placed[torch.sort(segment_of[placed], stable=True)[1]]
        num_things = placed.shape[0]
        # Stuff: pixels of each label in the image and among the uncovered ones.
        labels = semantic.flatten()
        free = (panoptic.flatten() == 0).long()
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=labels.device)
        present = counts.index_add(0, labels, torch.ones_like(labels)) > 0
        areas = counts.index_add(0, labels, free)
        # Label 0 is "things".
        not_things = torch.arange(self.num_classes, device=labels.device) > 0
        # Areas compared as Python numbers, as Detectron2's ``.item()``.
        stuff = present & (areas.double() >= float(self.stuff_area_thresh)) & not_things
        stuff_ids = num_things + torch.cumsum(stuff.long(), dim=0)  # (C,), for kept labels
        fill = (free > 0) & stuff[labels]
        panoptic = torch.where(fill, stuff_ids[labels].int(), panoptic.flatten())
        stuff_labels = torch.nonzero(stuff).flatten()
        return (
            panoptic.view(height, width),
            torch.cat((area_of[placed], areas[stuff_labels])),
            torch.cat((classes[placed], stuff_labels)),
            torch.cat((placed, torch.full_like(stuff_labels, -1))),
        )


def panoptic_detections(model: nn.Module, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The eager Panoptic FPN's result on one (3, H, W) image at the input size, in the program's
    form: the detections as :func:`fpn_plugin.export.common.eager_detections` gives them, and the
    outputs of :data:`PANOPTIC_OUTPUTS` from Detectron2's own ``sem_seg_postprocess``,
    ``detector_postprocess`` and ``combine_semantic_and_instance_outputs``, as
    ``PanopticFPN.inference`` runs them with ``height`` and ``width`` the input's."""
    height, width = image.shape[-2], image.shape[-1]
    with torch.no_grad():
        detector_results, sem_seg_results = model.inference(
            [{"image": image}], do_postprocess=False
        )
        raw = detector_results[0]
        out = {k: v.clone() for k, v in fields(raw).items()}
        sem_seg = sem_seg_postprocess(sem_seg_results[0], raw.image_size, height, width)
        instances = detector_postprocess(raw, height, width)
        panoptic, info = combine_semantic_and_instance_outputs(
            instances,
            sem_seg.argmax(dim=0),
            model.combine_overlap_thresh,
            model.combine_stuff_area_thresh,
            model.combine_instances_score_thresh,
        )
    # detector_postprocess drops empty boxes (Boxes.nonempty): its index -> the detection's.
    rows = torch.nonzero(Boxes(out["pred_boxes"]).nonempty()).flatten()
    areas, classes, instances_of = [], [], []
    for segment in info:
        if segment["isthing"]:
            areas.append(int((panoptic == segment["id"]).sum()))
            instances_of.append(int(rows[segment["instance_id"]]))
        else:
            areas.append(segment["area"])
            instances_of.append(-1)
        classes.append(segment["category_id"])
    out.update(
        panoptic_seg=panoptic,
        segment_areas=torch.tensor(areas, dtype=torch.int64),
        segment_classes=torch.tensor(classes, dtype=torch.int64),
        segment_instances=torch.tensor(instances_of, dtype=torch.int64),
        sem_seg=sem_seg,
    )
    return out


def segments_info(outputs: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[dict]]:
    """Detectron2's panoptic result, ``(panoptic_seg, segments_info)`` as
    ``PanopticFPN`` returns it at the input size, from the program's outputs (a dict by output
    name: :data:`PANOPTIC_OUTPUTS`, ``pred_boxes`` and ``scores``).

    Each segment is a dict: things ``id``, ``isthing`` True, ``score``, ``category_id``,
    ``instance_id`` (the row of the instances Detectron2's ``detector_postprocess`` keeps, i.e. of
    the detections with a non-empty box); stuff ``id``, ``isthing`` False, ``category_id``,
    ``area`` (pixels).
    """
    # Row among the non-empty boxes (those detector_postprocess keeps), for each detection.
    kept_row = torch.cumsum(Boxes(outputs["pred_boxes"]).nonempty().long(), dim=0) - 1
    info = []
    areas = outputs["segment_areas"].tolist()
    classes = outputs["segment_classes"].tolist()
    for k, instance in enumerate(outputs["segment_instances"].tolist()):
        if instance >= 0:
            info.append(
                {
                    "id": k + 1,
                    "isthing": True,
                    "score": outputs["scores"][instance].item(),
                    "category_id": classes[k],
                    "instance_id": int(kept_row[instance]),
                }
            )
        else:
            info.append(
                {"id": k + 1, "isthing": False, "category_id": classes[k], "area": areas[k]}
            )
    return outputs["panoptic_seg"], info
