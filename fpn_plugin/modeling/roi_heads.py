"""RoI heads that pool every RoI from the pyramid level given by Eqn. (1) of the paper.

The box head (and the mask and keypoint heads, when enabled) are Detectron2's own and are shared
by all levels (paper, Sec. 4.2); only the poolers are replaced by :class:`LevelMappingROIPooler`.
"""

from typing import Dict, List, Optional

import torch

from detectron2.config import configurable
from detectron2.layers import shapes_to_tensor
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage, has_event_storage

from ..config import plugin_key
from .pooler import LevelMappingROIPooler

__all__ = ["LevelMappingROIHeads"]

# head name -> its config node; each node's POOLER_* keys configure that head's pooler.
_HEADS = {"box": "ROI_BOX_HEAD", "mask": "ROI_MASK_HEAD", "keypoint": "ROI_KEYPOINT_HEAD"}


@ROI_HEADS_REGISTRY.register()
class LevelMappingROIHeads(StandardROIHeads):
    """Detectron2's ``StandardROIHeads`` with level-mapping poolers.

    Adds two things: in training, the fraction of box RoIs pooled from each level is written to
    the event storage as ``roi_levels/p<k>``; in inference, with ``pred_levels``, each detection
    carries ``pred_levels``, the level its RoI was pooled from. Without it the outputs have exactly
    Detectron2's fields, which its tools and its TorchScript recipe (``scripting_with_instances``
    with the usual fields) expect.
    """

    # Constants for TorchScript, so that the code of disabled heads is compiled away (Detectron2
    # annotates StandardROIHeads so at export time; subclasses need their own annotations).
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]
    pred_levels: torch.jit.Final[bool]

    @configurable
    def __init__(self, *, pred_levels: bool = False, **kwargs):
        """
        Args:
            pred_levels: record each detection's pyramid level as ``pred_levels`` (2 for P2, ...)
                (``MODEL.ROI_HEADS.PRED_LEVELS``).
            kwargs: ``StandardROIHeads``'s arguments; the poolers are level-mapping ones when built
                from a config.
        """
        super().__init__(**kwargs)
        self.pred_levels = pred_levels

    @classmethod
    def from_config(cls, cfg, input_shape):
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.ROI_HEADS.IN_FEATURES names {missing}, which the backbone does not output; "
                f"it outputs {list(input_shape)}. Use those names (P2-P5 for the paper's detector)."
            )
        # Build the poolers first, so bad pooler settings fail with our messages.
        scales = [1.0 / input_shape[f].stride for f in in_features]
        poolers = {}
        for head, node in _HEADS.items():
            head_cfg = cfg.MODEL[node]
            if head == "box" or (head_cfg.POOLER_TYPE and cfg.MODEL[f"{head.upper()}_ON"]):
                poolers[f"{head}_pooler"] = LevelMappingROIPooler(
                    output_size=head_cfg.POOLER_RESOLUTION,
                    scales=scales,
                    sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
                    pooler_type=head_cfg.POOLER_TYPE,
                    canonical_box_size=plugin_key(cfg, "MODEL.ROI_HEADS.CANONICAL_BOX_SIZE"),
                    canonical_level=plugin_key(cfg, "MODEL.ROI_HEADS.CANONICAL_LEVEL"),
                )
        ret = super().from_config(cfg, input_shape)
        ret.update(poolers)
        ret["pred_levels"] = plugin_key(cfg, "MODEL.ROI_HEADS.PRED_LEVELS")
        return ret

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        if self.training:
            results = super().forward(images, features, proposals, targets)
            # None for a pooler passed in by hand.
            levels = getattr(self.box_pooler, "last_levels", None)
            if levels is not None and levels.numel() and has_event_storage():
                storage = get_event_storage()
                fractions = torch.bincount(
                    levels - self.box_pooler.min_level, minlength=len(self.box_pooler.scales)
                )
                fractions = (fractions.float() / levels.numel()).tolist()
                for k, frac in enumerate(fractions, start=self.box_pooler.min_level):
                    # No median smoothing: the logged fractions are one iteration's, and sum to 1.
                    storage.put_scalar(f"roi_levels/p{k}", frac, smoothing_hint=False)
            return results
        # StandardROIHeads' inference, written out because TorchScript cannot compile super().
        pred_instances = self._forward_box(features, proposals)
        pred_instances = self.forward_with_given_boxes(features, pred_instances)
        return pred_instances, {}

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        if self.training:
            return super()._forward_box(features, proposals)
        # Inference as in StandardROIHeads, keeping the proposal index of each detection
        # to record which level it was pooled from.
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [x.proposal_boxes for x in proposals]
        )
        predictions = self.box_predictor(self.box_head(box_features))
        pred_instances, kept = self.box_predictor.inference(predictions, proposals)
        if not self.pred_levels:
            return pred_instances
        if torch.jit.is_scripting():
            levels = self.box_pooler.last_levels
        else:
            levels = getattr(self.box_pooler, "last_levels", None)
        if levels is not None:
            # Each image's first RoI among all RoIs; sizes as tensors, so that a traced model
            # takes other numbers of proposals per image than the traced batch had.
            sizes = shapes_to_tensor([p.__len__() for p in proposals], device=levels.device)
            starts = torch.cumsum(sizes, 0) - sizes
            for i, (inst, keep) in enumerate(zip(pred_instances, kept)):
                inst.pred_levels = levels[keep + starts[i]]
        return pred_instances
