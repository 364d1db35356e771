"""Mask R-CNN with FPN, R50: the Faster R-CNN of ``faster_rcnn_fpn.py`` plus Detectron2's mask head,
whose 14x14 RoI features are pooled from the level of Eqn. (1) too (:class:`LevelMappingROIPooler`).
The same model as Detectron2's lazy ``common/models/mask_rcnn_fpn.py`` with the plugin's components.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import MaskRCNNConvUpsampleHead

from .faster_rcnn_fpn import head_pooler, model

model.roi_heads.update(
    mask_in_features=["p2", "p3", "p4", "p5"],
    mask_pooler=head_pooler(14),
    # 4 x (3x3 conv, 256) + 2x deconv + per-class 1x1 conv: 28x28 masks.
    mask_head=L(MaskRCNNConvUpsampleHead)(
        input_shape=ShapeSpec(channels=256, width=14, height=14),
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256, 256],
    ),
)
