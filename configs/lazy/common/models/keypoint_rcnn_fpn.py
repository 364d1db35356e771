"""Keypoint R-CNN with FPN, R50: the Faster R-CNN of ``faster_rcnn_fpn.py`` plus Detectron2's
keypoint head (17 COCO keypoints), whose 14x14 RoI features are pooled from the level of Eqn. (1).
The same model as Detectron2's lazy ``common/models/keypoint_rcnn_fpn.py`` with the plugin's
components.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import KRCNNConvDeconvUpsampleHead

from .faster_rcnn_fpn import head_pooler, model

model.roi_heads.update(
    num_classes=1,  # person
    keypoint_in_features=["p2", "p3", "p4", "p5"],
    keypoint_pooler=head_pooler(14),
    keypoint_head=L(KRCNNConvDeconvUpsampleHead)(
        input_shape=ShapeSpec(channels=256, width=14, height=14),
        num_keypoints=17,
        conv_dims=[512] * 8,
        loss_normalizer="visible",
    ),
)
# As in Detectron2: 1500 proposals per training image (1000 hurt box AP), smooth-L1 box loss.
model.proposal_generator.post_nms_topk = (1500, 1000)
model.roi_heads.box_predictor.smooth_l1_beta = 0.5
