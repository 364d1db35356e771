"""The benchmark's models: the plugin's detector and Detectron2's equivalent with the same weights,
and torchvision's ``fasterrcnn_resnet50_fpn`` as a second reference.

The plugin's config is ``configs/fpn_r50.yaml`` (against Detectron2's built-in
``COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml``) or ``--config-file X`` (against X with the three
component names swapped back to Detectron2's); if ``MODEL.FPN.BOTTOM_UP`` is not Detectron2's
ResNet, the reference backbone is Detectron2's ``FPN`` over that bottom-up. The plugin's model is
run as the tools run it (``build_model`` + ``fpn_plugin.accel.accelerate`` with its
``MODEL.ACCEL``); Detectron2's is plain unless ``--accelerate-reference``.
"""

import os
import warnings
from typing import Tuple

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.modeling import BACKBONE_REGISTRY, build_model
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

import fpn_plugin  # noqa: F401  (registers the plugin's components)
from fpn_plugin.accel import accelerate
from fpn_plugin.config import detectron2_config_file, get_plugin_cfg
from fpn_plugin.utils.testing import make_trained_like

from .checkout import REPO
from .options import BenchmarkOptions

__all__ = [
    "D2_R50_FPN",
    "DEFAULT_CONFIG",
    "SWAP_BACK",
    "REFERENCE_FPN",
    "MODEL_CHANGING_KEYS",
    "detectron2_fpn_over_bottom_up",
    "default_config_path",
    "build_cfgs",
    "build_models",
    "accelerated",
    "build_torchvision_model",
]

D2_R50_FPN = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
#: The plugin's config benchmarked by default, relative to the checkout holding these tools.
DEFAULT_CONFIG = "configs/fpn_r50.yaml"
#: Component names: plugin -> Detectron2 (the reference: the plugin config with these swapped back).
SWAP_BACK = {
    "MODEL.BACKBONE.NAME": ("build_fpn_neck_backbone", "build_resnet_fpn_backbone"),
    "MODEL.ANCHOR_GENERATOR.NAME": ("SharedAnchorGenerator", "DefaultAnchorGenerator"),
    "MODEL.ROI_HEADS.NAME": ("LevelMappingROIHeads", "StandardROIHeads"),
}
#: Reference backbone when MODEL.FPN.BOTTOM_UP is not Detectron2's ResNet (which is all that
#: ``build_resnet_fpn_backbone`` builds): Detectron2's FPN over the same bottom-up.
REFERENCE_FPN = "detectron2_fpn_over_bottom_up"
#: Plugin keys that change the model in ways Detectron2's components ignore.
MODEL_CHANGING_KEYS = (
    "MODEL.FPN.UPSAMPLE",
    "MODEL.FPN.EXTRA_LEVELS",
    "MODEL.FPN.TOP_DOWN",
    "MODEL.FPN.LATERAL",
    "MODEL.FPN.FINEST_ONLY",
    "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE",
    "MODEL.ROI_HEADS.CANONICAL_BOX_SIZE",
    "MODEL.ROI_HEADS.CANONICAL_LEVEL",
)


def detectron2_fpn_over_bottom_up(cfg: CfgNode, input_shape) -> FPN:
    """Detectron2's ``FPN`` built as ``build_resnet_fpn_backbone`` builds it, over the bottom-up
    that ``MODEL.FPN.BOTTOM_UP`` names (e.g. the quickstart's narrow BasicBlock ResNet)."""
    bottom_up = BACKBONE_REGISTRY.get(cfg.MODEL.FPN.BOTTOM_UP)(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


if REFERENCE_FPN not in BACKBONE_REGISTRY:  # a reloaded module must not register it twice
    BACKBONE_REGISTRY.register(detectron2_fpn_over_bottom_up)


def default_config_path() -> str:
    """``configs/fpn_r50.yaml`` of the checkout that holds these tools."""
    path = os.path.join(REPO, DEFAULT_CONFIG)
    if not os.path.isfile(path):
        raise ValueError(
            f"the default plugin config {DEFAULT_CONFIG} is not in this checkout "
            f"({REPO}); pass --config-file with a plugin YAML config."
        )
    return path


def _get(cfg: CfgNode, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def build_cfgs(options: BenchmarkOptions) -> Tuple[CfgNode, CfgNode, Tuple[str, str]]:
    """(plugin cfg, Detectron2 reference cfg, names of the two), frozen; ``--opts`` go into both."""
    ours = get_plugin_cfg()
    ref = get_plugin_cfg()  # the plugin's extra keys are harmless to Detectron2's components
    if options.config_file is None:
        ours.merge_from_file(default_config_path())
        ref.merge_from_file(detectron2_config_file(D2_R50_FPN))
        names = (DEFAULT_CONFIG, D2_R50_FPN)
    else:
        ours.merge_from_file(options.config_file)
        ref.merge_from_file(options.config_file)
        for key, (plugin_name, d2_name) in SWAP_BACK.items():
            node, leaf = key.rsplit(".", 1)
            if _get(ref, node)[leaf] == plugin_name:
                _get(ref, node)[leaf] = d2_name
        names = (options.config_file, f"{options.config_file} with Detectron2's components")
    for cfg in (ours, ref):
        cfg.merge_from_list(list(options.opts))
        cfg.MODEL.DEVICE = options.device
        cfg.MODEL.WEIGHTS = ""
    resnet_only = ref.MODEL.FPN.BOTTOM_UP == "build_resnet_backbone"
    if ref.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone" and not resnet_only:
        ref.MODEL.BACKBONE.NAME = REFERENCE_FPN
    defaults = get_plugin_cfg()
    changed = [k for k in MODEL_CHANGING_KEYS if _get(ours, k) != _get(defaults, k)]
    if changed:
        warnings.warn(
            f"the plugin config sets {changed}, which Detectron2's components ignore: "
            "the two models are not the same detector.",
            stacklevel=2,
        )
    ours.freeze()
    ref.freeze()
    return ours, ref, names


def accelerated(
    which: str, model: nn.Module, cfg_ours: CfgNode, options: BenchmarkOptions
) -> nn.Module:
    """``model`` (``which``: "ours" or "detectron2") as the benchmark runs it: the plugin's with
    the strategies of its ``MODEL.ACCEL``; Detectron2's with the same ones under
    ``--accelerate-reference``, else plain. In place; returns ``model``."""
    if which == "ours" or options.accelerate_reference:
        accelerate(model, cfg_ours)
    return model


def build_models(options: BenchmarkOptions, cfg_ours: CfgNode, cfg_ref: CfgNode):
    """(Detectron2's model, the plugin's model) in eval mode, with the same weights.

    Detectron2's is built first (``--weights`` loaded, or random weights scaled by
    ``make_trained_like``); its ``state_dict`` is loaded into the plugin's with ``strict=True``.
    """
    torch.manual_seed(options.seed)
    ref = build_model(cfg_ref).eval()
    if options.weights:
        from detectron2.checkpoint import DetectionCheckpointer

        DetectionCheckpointer(ref).load(options.weights)
    else:
        make_trained_like(ref)
    ours = build_model(cfg_ours).eval()
    try:
        ours.load_state_dict(ref.state_dict(), strict=True)
    except RuntimeError as e:
        raise RuntimeError(
            "The Detectron2 reference's state_dict does not load into the plugin's model "
            "(strict=True): the config uses options that Detectron2's components do not have; "
            f"benchmark a config without them.\n{e}"
        ) from e
    return accelerated("detectron2", ref, cfg_ours, options), accelerated(
        "ours", ours, cfg_ours, options
    )


def build_torchvision_model(
    options: BenchmarkOptions, min_size: int, max_size: int, num_proposals: int
):
    """torchvision's ``fasterrcnn_resnet50_fpn``, random weights (nothing downloaded), eval mode.

    Its random RPN head is scaled like ``make_trained_like`` so that it proposes about
    ``num_proposals`` boxes per image too; images are resized to ``min_size``/``max_size`` pixels.
    """
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(options.seed)
    model = fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        rpn_pre_nms_top_n_test=num_proposals,
        rpn_post_nms_top_n_test=num_proposals,
        box_score_thresh=0.0,
        min_size=min_size,
        max_size=max_size,
    )
    with torch.no_grad():
        model.rpn.head.bbox_pred.weight.mul_(1e-3)
        model.rpn.head.cls_logits.weight.mul_(0.02)
    return model.to(options.device).eval()
