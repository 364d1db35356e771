"""The state a benchmark run shares between its measurements: :class:`Bench`."""

from typing import Dict, List

import torch

from detectron2.structures import Boxes, Instances

from fpn_plugin.utils.testing import random_boxes

from .inputs import image_paths, load_inputs, model_inputs
from .models import build_cfgs, build_models
from .options import BenchmarkOptions

__all__ = ["Bench"]


class Bench:
    """The two models, the batch, and what several measurements share (computed once, on demand).

    ``models`` is ``{"ours": plugin's model, "detectron2": reference}``, both in eval mode with
    the same weights; measurements add to ``proposal_counts`` and ``checks``.
    """

    def __init__(self, options: BenchmarkOptions, allocator: str = ""):
        self.options = options
        self.device = options.device
        self.allocator = allocator
        self.cfg_ours, self.cfg_ref, self.config_names = build_cfgs(options)
        self.ref, self.ours = build_models(options, self.cfg_ours, self.cfg_ref)
        self.models = {"ours": self.ours, "detectron2": self.ref}
        self.batch_inputs = load_inputs(options, self.cfg_ref, options.batch)
        self.num_rois = options.num_rois or self.cfg_ref.MODEL.RPN.POST_NMS_TOPK_TEST
        self.train_rois = options.train_rois or self.cfg_ref.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
        self.proposal_counts: Dict[str, List[int]] = {}
        self.checks: Dict[str, float] = {}
        self.cache: Dict[str, object] = {}

    @torch.no_grad()
    def batch(self, which: str):
        """(ImageList, {name: (N, C, H/s, W/s) features}) of the batch through ``which``'s
        preprocessing and backbone."""
        key = f"batch/{which}"
        if key not in self.cache:
            model = self.models[which]
            images = model.preprocess_image(model_inputs(self.batch_inputs))
            self.cache[key] = (images, model.backbone(images.tensor))
        return self.cache[key]

    @torch.no_grad()
    def proposals(self) -> List[Instances]:
        """Detectron2's RPN proposals (eval) on the batch; the counts per image of both models'
        RPNs are recorded in ``proposal_counts``."""
        if "proposals" not in self.cache:
            for which, model in self.models.items():
                images, features = self.batch(which)
                props, _ = model.proposal_generator(images, features, None)
                self.proposal_counts[f"batch_eval/{which}"] = [len(p) for p in props]
                if which == "detectron2":
                    self.cache["proposals"] = props
        return self.cache["proposals"]

    def rois(self, per_image: int, seed_offset: int):
        """(``per_image`` RoIs per batch image as ``Boxes``, XYXY pixels; random boxes added).

        The RoIs are Detectron2's RPN proposals on the batch -- the top ``per_image``
        (``seed_offset`` 0, test RoIs) or a random subset (training RoIs) -- topped up with random
        boxes if there are too few.
        """
        g = torch.Generator().manual_seed(self.options.seed + seed_offset)
        images, _ = self.batch("detectron2")
        out, topped_up = [], 0
        for props, (h, w) in zip(self.proposals(), images.image_sizes):
            boxes = props.proposal_boxes.tensor.detach().cpu()
            if len(boxes) > per_image:
                if seed_offset:
                    boxes = boxes[torch.randperm(len(boxes), generator=g)[:per_image]]
                else:
                    boxes = boxes[:per_image]
            if len(boxes) < per_image:
                topped_up += per_image - len(boxes)
                boxes = torch.cat([boxes, random_boxes(per_image - len(boxes), h, w, g)])
            out.append(Boxes(boxes.to(self.device)))
        return out, topped_up

    def pooler_features(self, which: str) -> List[torch.Tensor]:
        """The batch's features that ``which``'s box pooler reads (P2-P5), finest first."""
        _, features = self.batch(which)
        return [features[f] for f in self.models[which].roi_heads.box_in_features]

    def single_inputs(self) -> List[Dict]:
        """Images for the one-image measurements: the batch's random images, or up to
        warmup + reps real ones."""
        if "single" not in self.cache:
            o = self.options
            if o.images:
                count = max(1, min(len(image_paths(o.images)), o.warmup + o.reps))
                self.cache["single"] = load_inputs(o, self.cfg_ref, count)
            else:
                self.cache["single"] = self.batch_inputs
        return self.cache["single"]
