"""Any timm network as the FPN's bottom-up pathway (``MODEL.FPN.BOTTOM_UP: build_timm_backbone``).

The bottom-up network is ``timm.create_model(MODEL.TIMM.NAME, features_only=True,
out_indices=MODEL.TIMM.OUT_INDICES)``: timm's feature extractor of the model, which returns one map
per selected feature level. Level ``i`` of timm's ``feature_info`` (e.g. ``layer2`` of a ResNet,
``stages.1`` of a ConvNeXt) is output as ``"stage<i>"``, with the channels and stride timm records
for it, so ``MODEL.FPN.IN_FEATURES`` names these outputs (e.g. ``["stage1", ..., "stage4"]`` for a
timm ResNet, EfficientNet or MobileNetV3, ``["stage0", ..., "stage3"]`` for a ConvNeXt). Whether
the strides double level to level, as the pyramid needs, is checked by :class:`~.neck.FPNNeck`.

Nothing is downloaded unless ``MODEL.TIMM.PRETRAINED`` is True; ``MODEL.TIMM.WEIGHTS`` loads a
local file of timm's weights instead. timm's pretrained models expect RGB inputs normalised with
their own mean and std (ImageNet's for most): ``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN`` and
``MODEL.PIXEL_STD`` must say so (configs/convnext_t_fpn.yaml does); a warning names them otherwise.

timm is an optional dependency (``pip install timm``, or the ``timm`` extra of this package): it
is imported when a timm bottom-up is built, not when the plugin is imported.
"""

import logging
import math
import os
from typing import Dict, List, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

from ..config import plugin_key
from ._checks import check_choice

__all__ = ["TimmBottomUp", "build_timm_backbone", "freeze_batchnorm", "import_timm"]

NORMS = ("", "FrozenBN")

logger = logging.getLogger(__name__)


def import_timm():
    """The ``timm`` module; ``ImportError`` saying how to install it where it is missing."""
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            f"MODEL.FPN.BOTTOM_UP = 'build_timm_backbone' needs the timm package ({e}). Install it "
            "with `pip install timm` (or `pip install 'fpn_plugin[timm]'`)."
        ) from e
    return timm


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm in ``module`` made frozen (fixed statistics and affine, no parameters left).

    Plain ``BatchNorm2d``/``SyncBatchNorm`` become Detectron2's ``FrozenBatchNorm2d``, as in
    Detectron2's ResNet. timm's ``BatchNormAct2d`` (a BatchNorm2d subclass that also applies an
    activation) becomes timm's ``FrozenBatchNormAct2d``, which keeps the activation; Detectron2's
    converter would drop it. Returns ``module`` converted in place, or its replacement where
    ``module`` itself is a BatchNorm.
    """
    from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct, freeze_batch_norm_2d

    if isinstance(module, (BatchNormAct2d, SyncBatchNormAct)):
        return freeze_batch_norm_2d(module)
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
    for name, child in module.named_children():
        new_child = freeze_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def _brief(error: Exception, limit: int = 300) -> str:
    """``error``'s message on one line, cut at ``limit`` characters (load_state_dict's list
    every missing key)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _check_out_indices(out_indices: Sequence[int]) -> List[int]:
    if (
        isinstance(out_indices, (str, bytes))
        or not out_indices
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in out_indices)
    ):
        raise ValueError(
            f"MODEL.TIMM.OUT_INDICES = {out_indices!r} must be a non-empty list of timm feature "
            "levels (indices into the model's feature_info), finest first, e.g. [1, 2, 3, 4]."
        )
    return list(out_indices)


class TimmBottomUp(Backbone):
    """A timm feature extractor as a Detectron2 :class:`Backbone`.

    Forward: images (N, C, H, W) -> ``{"stage<i>": (N, C_i, H / s_i, W / s_i)}`` for each ``i`` of
    ``out_indices``, where C_i and s_i (pixels) are the channels and reduction timm's
    ``feature_info`` records for level i (rounded as the network's convolutions round where H, W
    are not multiples of s_i). The timm model is the attribute ``model``.
    """

    @configurable
    def __init__(
        self,
        model_name: str,
        out_indices: Sequence[int],
        *,
        in_channels: int = 3,
        pretrained: bool = False,
        weights: str = "",
        freeze_at: int = 0,
        norm: str = "",
    ):
        """
        Args:
            model_name: a timm model name, e.g. "resnet50", "convnext_tiny" (``MODEL.TIMM.NAME``).
            out_indices: timm feature levels to output, finest first; negative ones count from
                the last level (``MODEL.TIMM.OUT_INDICES``).
            in_channels: channels of the input images.
            pretrained: load timm's default pretrained weights; timm downloads them unless they
                are in its cache (``MODEL.TIMM.PRETRAINED``).
            weights: path of a local file of the timm model's weights, "" for none
                (``MODEL.TIMM.WEIGHTS``). Exclusive with ``pretrained``.
            freeze_at: as Detectron2's ResNet ``freeze_at``: 0 freezes nothing; k >= 1 freezes
                every module that runs before the first feature level of stride > 2**k (1: the
                stem; 2: the stem and the stride-4 stage, Detectron2's "res2"; ...), their
                BatchNorms made frozen (``MODEL.TIMM.FREEZE_AT``).
            norm: "" keeps timm's norm layers; "FrozenBN" freezes every BatchNorm
                (``MODEL.TIMM.NORM``). Other norms (ConvNeXt's LayerNorm) are kept either way.
        """
        super().__init__()
        timm = import_timm()
        out_indices = _check_out_indices(out_indices)
        self._check_arguments(timm, model_name, pretrained, weights, freeze_at, norm)
        self.model = self._create(timm, model_name, out_indices, in_channels, pretrained, weights)
        info = self.model.feature_info
        num_levels = len(info.info)
        levels = [i % num_levels for i in out_indices]
        if any(b <= a for a, b in zip(levels[:-1], levels[1:])):
            raise ValueError(
                f"MODEL.TIMM.OUT_INDICES = {list(out_indices)} must name distinct feature levels "
                f"of {model_name} in increasing order (finest first), e.g. "
                f"{list(range(1, num_levels))}."
            )
        self.model_name = model_name
        self._out_features = [f"stage{i}" for i in levels]
        self._out_feature_channels = dict(zip(self._out_features, info.channels()))
        self._out_feature_strides = dict(zip(self._out_features, info.reduction()))
        self._all_strides = [info.get("reduction", i) for i in range(num_levels)]
        self._all_modules = [info.get("module", i) for i in range(num_levels)]
        self._last_level = levels[-1]
        if freeze_at > 0:
            self.freeze(freeze_at)
        if norm == "FrozenBN":
            freeze_batchnorm(self.model)

    @staticmethod
    def _check_arguments(timm, model_name, pretrained, weights, freeze_at, norm) -> None:
        if not isinstance(model_name, str) or not timm.is_model(model_name):
            raise ValueError(
                f"MODEL.TIMM.NAME = {model_name!r} is not a timm model; "
                "timm.list_models('<pattern>') lists the names (e.g. 'resnet50', 'convnext_tiny', "
                "'efficientnet_b0')."
            )
        if not isinstance(pretrained, bool):
            raise ValueError(f"MODEL.TIMM.PRETRAINED = {pretrained!r} must be True or False.")
        if weights:
            if pretrained:
                raise ValueError(
                    f"MODEL.TIMM.PRETRAINED = True and MODEL.TIMM.WEIGHTS = {weights!r} both load "
                    "weights; set only one (WEIGHTS for a local file, PRETRAINED to download)."
                )
            if not os.path.isfile(weights):
                raise ValueError(
                    f"MODEL.TIMM.WEIGHTS = {weights!r} is not a file; give the path of a local "
                    f"file of {model_name}'s timm weights (.safetensors, .pth or .bin), or '' "
                    "for none."
                )
        if not isinstance(freeze_at, int) or isinstance(freeze_at, bool) or freeze_at < 0:
            raise ValueError(
                f"MODEL.TIMM.FREEZE_AT = {freeze_at!r} must be an integer >= 0 (0 freezes nothing; "
                "k freezes the stem and the stages up to stride 2**k, as MODEL.BACKBONE.FREEZE_AT)."
            )
        check_choice(norm, NORMS, "MODEL.TIMM.NORM")

    @staticmethod
    def _create(timm, model_name, out_indices, in_channels, pretrained, weights) -> nn.Module:
        kwargs = dict(features_only=True, out_indices=tuple(out_indices), in_chans=in_channels)
        if weights:
            # timm loads the file as its pretrained weights: the classifier is dropped and the
            # checkpoint adapted to the features-only model as for a download.
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=weights))
        else:
            kwargs.update(pretrained=pretrained)
        try:
            return timm.create_model(model_name, **kwargs)
        except IndexError as e:
            # timm indexes its feature_info with out_indices.
            num_levels = len(timm.create_model(model_name, features_only=True).feature_info.info)
            raise ValueError(
                f"MODEL.TIMM.OUT_INDICES = {list(out_indices)} is out of range: {model_name} has "
                f"{num_levels} feature levels (indices 0..{num_levels - 1})."
            ) from e
        except Exception as e:  # timm and its download stack raise many types
            if weights:
                raise ValueError(
                    f"MODEL.TIMM.WEIGHTS = {weights!r} could not be loaded into {model_name} "
                    f"({_brief(e)}); give a checkpoint of this timm model (its state_dict, as "
                    "timm saves it)."
                ) from e
            if pretrained:  # a ValueError: the tools print it as a bad setting, with the fix
                raise ValueError(
                    f"MODEL.TIMM.PRETRAINED = True: timm could not load the pretrained weights "
                    f"of {model_name} ({type(e).__name__}: {_brief(e)}). Without network access, "
                    "download them elsewhere and set MODEL.TIMM.WEIGHTS to the local file with "
                    "MODEL.TIMM.PRETRAINED False; or set MODEL.TIMM.PRETRAINED False for random "
                    "weights."
                ) from e
            raise

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {
            "model_name": plugin_key(cfg, "MODEL.TIMM.NAME"),
            "out_indices": list(plugin_key(cfg, "MODEL.TIMM.OUT_INDICES")),
            "in_channels": input_shape.channels,
            "pretrained": plugin_key(cfg, "MODEL.TIMM.PRETRAINED"),
            "weights": plugin_key(cfg, "MODEL.TIMM.WEIGHTS"),
            "freeze_at": plugin_key(cfg, "MODEL.TIMM.FREEZE_AT"),
            "norm": plugin_key(cfg, "MODEL.TIMM.NORM"),
        }

    def _find_module(self, name: str) -> str:
        """The name in ``self.model`` of timm's feature module ``name``: the features wrappers
        keep it as is, flatten it ("stages.1" -> "stages_1") or hold the model as ``model``."""
        modules = dict(self.model.named_modules())
        for candidate in (name, name.replace(".", "_"), f"model.{name}"):
            if candidate in modules:
                return candidate
        raise ValueError(
            f"MODEL.TIMM.FREEZE_AT cannot find the feature module {name!r} in timm's "
            f"{self.model_name} features model; set MODEL.TIMM.FREEZE_AT 0 for this model."
        )

    def freeze(self, freeze_at: int) -> "TimmBottomUp":
        """Freeze every module that runs before the first feature level of stride > 2**freeze_at:
        its parameters stop requiring gradients and its BatchNorms become frozen. Returns self.

        timm's feature extractors register their modules in the order they run, so "runs
        before" is "comes before in ``named_modules()``"; only a module's own parameters count,
        not those of the children that come after it.
        """
        boundary = next((i for i, s in enumerate(self._all_strides) if s > 2**freeze_at), None)
        # A level after the last output is not built: then everything built runs before it.
        stop = None
        if boundary is not None and boundary <= self._last_level:
            stop = self._find_module(self._all_modules[boundary])
        frozen = []
        for name, module in self.model.named_modules():
            if name == stop:
                break
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
            frozen.append(name)
        # BatchNorm modules are leaves (timm's BatchNormAct2d holds only its activation): convert
        # each one frozen above, leaving its parent's later children alone.
        norms = (nn.BatchNorm2d, nn.SyncBatchNorm)
        for name in frozen:
            if name and isinstance(self.model.get_submodule(name), norms):
                parent, _, leaf = name.rpartition(".")
                owner = self.model.get_submodule(parent) if parent else self.model
                setattr(owner, leaf, freeze_batchnorm(getattr(owner, leaf)))
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images (N, C, H, W), normalised as the timm model expects.
        Returns:
            dict "stage<i>" -> (N, C_i, ~H / s_i, ~W / s_i), finest first.
        """
        return dict(zip(self._out_features, self.model(x)))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        channels, strides = self._out_feature_channels, self._out_feature_strides
        return {n: ShapeSpec(channels=channels[n], stride=strides[n]) for n in self._out_features}

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())


def _check_normalisation(cfg, bottom_up: TimmBottomUp) -> None:
    """Warn where pretrained weights are loaded but the inputs are not normalised as they expect."""
    pretrained_cfg = getattr(bottom_up.model, "pretrained_cfg", None) or {}
    if "mean" not in pretrained_cfg or "std" not in pretrained_cfg:
        return
    order = slice(None) if cfg.INPUT.FORMAT == "RGB" else slice(None, None, -1)
    mean = [round(255 * m, 3) for m in pretrained_cfg["mean"]][order]
    std = [round(255 * s, 3) for s in pretrained_cfg["std"]][order]
    expected = (mean, std)
    given = (list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD))
    close = all(
        len(a) == len(b) and all(math.isclose(x, y, abs_tol=0.01) for x, y in zip(a, b))
        for a, b in zip(given, expected)
    )
    if cfg.INPUT.FORMAT != "RGB" or not close:
        logger.warning(
            f"timm's {bottom_up.model_name} weights expect RGB inputs normalised with mean "
            f"{[round(255 * m, 3) for m in pretrained_cfg['mean']]} and std "
            f"{[round(255 * s, 3) for s in pretrained_cfg['std']]} (0-255, RGB); the config has "
            f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}, MODEL.PIXEL_MEAN {given[0]}, MODEL.PIXEL_STD "
            f"{given[1]}. Set INPUT.FORMAT 'RGB' and those values "
            "(see configs/convnext_t_fpn.yaml)."
        )


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg, input_shape: ShapeSpec) -> TimmBottomUp:
    """``MODEL.FPN.BOTTOM_UP: "build_timm_backbone"``: :class:`TimmBottomUp` from ``MODEL.TIMM``."""
    bottom_up = TimmBottomUp(cfg, input_shape)
    if plugin_key(cfg, "MODEL.TIMM.PRETRAINED") or plugin_key(cfg, "MODEL.TIMM.WEIGHTS"):
        _check_normalisation(cfg, bottom_up)
    elif plugin_key(cfg, "MODEL.TIMM.FREEZE_AT") > 0 and not cfg.MODEL.WEIGHTS:
        logger.warning(
            f"MODEL.TIMM.FREEZE_AT = {plugin_key(cfg, 'MODEL.TIMM.FREEZE_AT')} freezes randomly "
            "initialised stages (no MODEL.TIMM.WEIGHTS, MODEL.TIMM.PRETRAINED or MODEL.WEIGHTS); "
            "set MODEL.TIMM.FREEZE_AT 0 to train from scratch."
        )
    return bottom_up
