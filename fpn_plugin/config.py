"""The plugin's config keys, and where the config touches the code.

Detectron2's existing keys keep their meaning
(``MODEL.FPN.IN_FEATURES/OUT_CHANNELS/NORM/FUSE_TYPE``,
``MODEL.ANCHOR_GENERATOR.SIZES/ASPECT_RATIOS/OFFSET``, ``MODEL.ROI_*_HEAD.POOLER_*`` ...).
:func:`add_fpn_plugin_config` only adds keys for options Detectron2 does not have; each has a
default that reproduces Detectron2's R50-FPN, so a Detectron2 FPN config turns into a plugin
config by changing the three ``NAME`` keys, and back. What the model computes is under
``MODEL.FPN`` (and ``MODEL.PAFPN``, ``MODEL.ANCHOR_GENERATOR``, ``MODEL.ROI_HEADS``); how it is
run is under ``MODEL.ACCEL``, read by :func:`fpn_plugin.accel.accelerate` only.
"""

import functools
import importlib.util
import os
import warnings
from typing import Any, Optional

import torch

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = [
    "add_fpn_plugin_config",
    "get_plugin_cfg",
    "RENAMED_KEYS",
    "plugin_key",
    "detectron2_config_file",
    "fall_back_to_cpu",
]

#: Keys that moved: old -> new. An old key still works (with a FutureWarning): it keeps a None
#: default, and :func:`plugin_key` reads it wherever the new key is read.
RENAMED_KEYS = {
    "MODEL.FPN.CHANNELS_LAST": "MODEL.ACCEL.CHANNELS_LAST",
    "MODEL.FPN.AUTOCAST_DTYPE": "MODEL.ACCEL.AUTOCAST_DTYPE",
    "MODEL.FPN.FOLD_FROZEN_BN": "MODEL.ACCEL.FOLD_FROZEN_BN",
    "MODEL.FPN.CPU_BLOCKED_LAYOUT": "MODEL.ACCEL.CPU_BLOCKED_LAYOUT",
    "MODEL.ANCHOR_GENERATOR.CACHE_SIZE": "MODEL.ACCEL.ANCHOR_CACHE_SIZE",
    "MODEL.FPN.PATH_AUGMENTATION": "MODEL.PAFPN.PATH_AUGMENTATION",
    "MODEL.FPN.FUSION_EPS": "MODEL.PAFPN.FUSION_EPS",
}
_OLD_NAMES = {new: old for old, new in RENAMED_KEYS.items()}


def _lookup(cfg: CN, key: str, default: Any = None) -> Any:
    """``cfg``'s value at the dotted ``key``, or ``default`` where a node or the leaf is missing."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


@functools.lru_cache(maxsize=None)
def _defaults() -> CN:
    return get_plugin_cfg()


def plugin_key(cfg: CN, key: str) -> Any:
    """The value of the plugin's config ``key`` in ``cfg``.

    Where ``cfg`` lacks the key (a config made by Detectron2's ``get_cfg()`` alone) it is the key's
    default, so that the components build from Detectron2's configs too. Where ``key`` is a new
    name in :data:`RENAMED_KEYS` and ``cfg`` still sets the old one, the old one's value counts
    (FutureWarning); ``ValueError`` naming both when they disagree.
    """
    default = _lookup(_defaults(), key)
    value = _lookup(cfg, key, default)
    old = _OLD_NAMES.get(key)
    old_value = _lookup(cfg, old) if old else None
    if old_value is None:
        return value
    if value != default and value != old_value:
        raise ValueError(f"{old} = {old_value!r} and {key} = {value!r} disagree; set only {key}.")
    warnings.warn(
        f"{old} is now {key}; please rename it in your config.", FutureWarning, stacklevel=2
    )
    return old_value


def add_fpn_plugin_config(cfg: CN) -> CN:
    """Add the plugin's keys (with their defaults) to ``cfg`` in place, and return it.

    Calling it twice is harmless: keys that already exist keep their values.
    """
    _C = cfg
    was_frozen = _C.is_frozen()
    _C.defrost()

    def _set(node, key, value):
        if key not in node:
            node[key] = value

    # --- Neck (MODEL.FPN): the architecture ---------------------------------------------------
    # Registered BACKBONE_REGISTRY name of the bottom-up network the neck sits on. It must output
    # MODEL.FPN.IN_FEATURES with strides that double level to level (ResNet: res2..res5).
    _set(_C.MODEL.FPN, "BOTTOM_UP", "build_resnet_backbone")
    # Top-down upsampling by 2: "nearest" (the paper) or "bilinear".
    _set(_C.MODEL.FPN, "UPSAMPLE", "nearest")
    # Levels above the last input: "none"; "p6_subsample" (P6 = stride-2 subsampling of P5, the
    # paper); "p6p7_c5" or "p6p7_p5" (P6, P7 by stride-2 3x3 convs from C5 or from P5, RetinaNet).
    _set(_C.MODEL.FPN, "EXTRA_LEVELS", "p6_subsample")
    # Paper ablations (Tables 1-2). TOP_DOWN=False: bottom-up pyramid, no top-down pathway (row d).
    _set(_C.MODEL.FPN, "TOP_DOWN", True)
    # LATERAL=False: top-down pyramid without 1x1 lateral connections (row e).
    _set(_C.MODEL.FPN, "LATERAL", True)
    # FINEST_ONLY=True: the full pyramid is built but only the finest map (P2) is output (row f).
    _set(_C.MODEL.FPN, "FINEST_ONLY", False)

    # --- PAFPN ("build_pafpn_neck_backbone", fpn_plugin/modeling/path_aggregation.py) ----------
    # It also accepts MODEL.FPN.FUSE_TYPE "weighted" (EfficientDet's fast normalized fusion).
    if "PAFPN" not in _C.MODEL:
        _C.MODEL.PAFPN = CN()
    # PANet's bottom-up path N_{k+1} = conv3x3(conv3x3_s2(N_k) + P_{k+1}) after the FPN.
    _set(_C.MODEL.PAFPN, "PATH_AUGMENTATION", True)
    # eps of the weighted fusion O = sum_i w_i I_i / (eps + sum_j w_j) (EfficientDet: 1e-4).
    _set(_C.MODEL.PAFPN, "FUSION_EPS", 1e-4)

    # --- BiFPN ("build_bifpn_backbone", fpn_plugin/modeling/bifpn.py), EfficientDet's neck ---
    # Its inputs and width are the other necks' keys: MODEL.FPN.BOTTOM_UP, MODEL.FPN.IN_FEATURES
    # (C3..C5), MODEL.FPN.OUT_CHANNELS (d; EfficientDet-D0: 64), MODEL.FPN.UPSAMPLE; so comparing
    # necks changes MODEL.BACKBONE.NAME only. It does not read MODEL.FPN's other keys (NORM,
    # FUSE_TYPE, EXTRA_LEVELS, ...): its own are these.
    if "BIFPN" not in _C.MODEL:
        _C.MODEL.BIFPN = CN()
    # BiFPN layers in a row, each one's outputs the next one's inputs (EfficientDet-D0: 3).
    _set(_C.MODEL.BIFPN, "NUM_LAYERS", 3)
    # Norm after every conv of the neck: "BN" (the paper), "SyncBN" (multi-GPU), "GN", "".
    _set(_C.MODEL.BIFPN, "NORM", "BN")
    # Levels above the coarsest input, each a stride-2 max-pooling (P6 after a 1x1 conv of C5):
    # 2 gives the paper's P6, P7.
    _set(_C.MODEL.BIFPN, "NUM_EXTRA_LEVELS", 2)
    # eps of every fusion node O = sum_i w_i I_i / (eps + sum_j w_j) (the paper: 1e-4).
    _set(_C.MODEL.BIFPN, "FUSION_EPS", 1e-4)

    # --- Execution (MODEL.ACCEL): how the model is run, read by fpn_plugin.accel.accelerate ---
    # Every key changes speed or memory, never the architecture or the parameters. The defaults
    # keep the outputs bit-identical, and run only on the devices where they were measured (the
    # others step aside there: fpn_plugin/accel/devices.py); ROI_ALIGN "embedding_bag",
    # CHANNELS_LAST, AUTOCAST_DTYPE, FOLD_FROZEN_BN and COMPILE change them by float rounding.
    if "ACCEL" not in _C.MODEL:
        _C.MODEL.ACCEL = CN()
    # False: the plain model, as its classes compute it (no strategy below is applied).
    _set(_C.MODEL.ACCEL, "ENABLED", True)
    # CPU float32 inference: a Detectron2 ResNet bottom-up and the lateral convs run on oneDNN
    # tensors (its blocked layout), skipping the two layout conversions of every NCHW convolution.
    # Checked once per process against the NCHW path (falls back if they differ). Ignored with
    # CHANNELS_LAST, AUTOCAST_DTYPE or COMPILE.
    _set(_C.MODEL.ACCEL, "CPU_BLOCKED_LAYOUT", True)
    # CPU inference: the top-down merge adds the upsampled map into the lateral map in place.
    _set(_C.MODEL.ACCEL, "IN_PLACE_TOP_DOWN", True)
    # CPU and CUDA: anchor grids kept per feature-map sizes (least recently used evicted); 0 turns
    # the cache off.
    _set(_C.MODEL.ACCEL, "ANCHOR_CACHE_SIZE", 16)
    # RoIAlign of the level-mapping poolers (Detectron2's ROIPooler is replaced by its equivalent):
    # "per_level" (one RoI op per level, one thread, as Detectron2); "parallel" (in inference the
    # same ops with the RoIs split over the CPU threads: bit-identical); "embedding_bag" (all levels
    # in one vectorised call: fastest, equal to float rounding, docs/performance.md); "auto"
    # ("parallel" in inference, "embedding_bag" when gradients flow, i.e. in training; on CPU only:
    # elsewhere, e.g. CUDA, "per_level").
    _set(_C.MODEL.ACCEL, "ROI_ALIGN", "auto")
    # Backbone in channels-last (NHWC) memory layout: faster convolutions, features equal to float
    # rounding (near-tied proposals may swap places in the ranking).
    _set(_C.MODEL.ACCEL, "CHANNELS_LAST", False)
    # Inference mixed precision of the backbone: "" (float32), "float16" or "bfloat16"; float32
    # features out. GPU fast mode: "float16" with CHANNELS_LAST. Training: SOLVER.AMP.ENABLED.
    _set(_C.MODEL.ACCEL, "AUTOCAST_DTYPE", "")
    # Inference: each FrozenBatchNorm folded into the convolution before it (one pass instead of
    # two).
    _set(_C.MODEL.ACCEL, "FOLD_FROZEN_BN", False)
    # Inference: the backbone (bottom-up + neck), the RPN (or RetinaNet) head and the RoI heads'
    # convs and fcs compiled by torch.compile (inductor, freezing), on any device. Outputs equal to
    # float rounding; the first call (and each new padded input size) compiles for tens of seconds.
    # Replaces CPU_BLOCKED_LAYOUT, IN_PLACE_TOP_DOWN and FOLD_FROZEN_BN. Training stays eager.
    _set(_C.MODEL.ACCEL, "COMPILE", False)

    # --- Renamed keys (RENAMED_KEYS): None = not set; a value is still honoured, with a warning.
    for old in RENAMED_KEYS:
        section, leaf = old.rsplit(".", 1)
        _set(_lookup(_C, section), leaf, None)

    # --- Narrow BasicBlock ResNet ("build_basic_resnet_backbone",
    #     fpn_plugin/modeling/basic_resnet.py)
    # Blocks in res2..res5; its widths are MODEL.RESNETS.STEM_OUT_CHANNELS and RES2_OUT_CHANNELS.
    _set(_C.MODEL.RESNETS, "BLOCKS_PER_STAGE", [2, 2, 2, 2])

    # --- timm bottom-up ("build_timm_backbone", fpn_plugin/modeling/timm_backbone.py) ---------
    # Any timm network (pip install timm) as MODEL.FPN.BOTTOM_UP: timm's features_only model.
    # Feature level i of timm's feature_info is output as "stage<i>" with timm's channels and
    # stride: MODEL.FPN.IN_FEATURES names these (timm ResNet/EfficientNet/MobileNetV3:
    # "stage1".."stage4" at strides 4..32; ConvNeXt: "stage0".."stage3"). timm's weights expect
    # RGB inputs normalised with timm's mean/std: INPUT.FORMAT "RGB", MODEL.PIXEL_MEAN
    # [123.675, 116.28, 103.53] and MODEL.PIXEL_STD [58.395, 57.12, 57.375] for ImageNet's.
    if "TIMM" not in _C.MODEL:
        _C.MODEL.TIMM = CN()
    # timm model name, as timm.create_model takes it (timm.list_models() lists them).
    _set(_C.MODEL.TIMM, "NAME", "resnet50")
    # timm feature levels to output, finest first (feature_info indices; negative: from the end).
    _set(_C.MODEL.TIMM, "OUT_INDICES", [1, 2, 3, 4])
    # True: timm's default pretrained weights, downloaded unless in timm's cache (needs network).
    # False (default): random weights, or those of WEIGHTS; nothing is downloaded.
    _set(_C.MODEL.TIMM, "PRETRAINED", False)
    # Local file of the timm model's weights (.safetensors/.pth/.bin as timm saves them, e.g.
    # model.safetensors of the model's timm page on the Hugging Face hub); "" for none.
    _set(_C.MODEL.TIMM, "WEIGHTS", "")
    # As MODEL.BACKBONE.FREEZE_AT (which a timm bottom-up does not read): 0 trains every stage;
    # k >= 1 freezes the stem and the stages up to stride 2**k (2: stem + stride-4 stage).
    _set(_C.MODEL.TIMM, "FREEZE_AT", 0)
    # "" keeps timm's norm layers trainable; "FrozenBN" freezes every BatchNorm (fixed statistics
    # and affine, as Detectron2's ResNet with pretrained weights). LayerNorms are kept either way.
    _set(_C.MODEL.TIMM, "NORM", "")

    # --- Anchors (MODEL.ANCHOR_GENERATOR) ----------------------------------------------------
    # Anchor scales per octave: each size s becomes s * 2**(i / n), i = 0..n-1 (RetinaNet: 3).
    _set(_C.MODEL.ANCHOR_GENERATOR, "SCALES_PER_OCTAVE", 1)

    # --- Level-mapping RoI pooler (MODEL.ROI_HEADS) -----------------------------------------
    # Eqn. (1) of the paper: k = floor(k0 + log2(sqrt(w * h) / s0)), clamped to the pyramid.
    # s0, in input-image pixels:
    _set(_C.MODEL.ROI_HEADS, "CANONICAL_BOX_SIZE", 224)
    # k0, the level (log2 of the stride) that an s0 x s0 RoI is pooled from:
    _set(_C.MODEL.ROI_HEADS, "CANONICAL_LEVEL", 4)
    # True: each detection also carries pred_levels, the level (2 for P2, ...) its RoI was pooled
    # from (tools/demo.py --color-by-level, exported models). False: exactly Detectron2's fields,
    # as its tools and its scripting recipe expect.
    _set(_C.MODEL.ROI_HEADS, "PRED_LEVELS", False)

    # --- The embedded synthetic dataset (fpn_plugin/data/shapes/) ---------------------------------
    # "fpn_shapes_train"/"fpn_shapes_val" are generated on first use with these settings, and so
    # is the panoptic variant "fpn_shapes_panoptic_{train,val}" (fpn_plugin/data/shapes/panoptic.py:
    # registered as Detectron2 registers COCO panoptic, also as "..._separated", "..._stuffonly").
    if "FPN_SHAPES" not in _C.DATASETS:
        _C.DATASETS.FPN_SHAPES = CN()
    # Cache folder; "" for $FPN_PLUGIN_DATA, else ~/.cache/fpn_plugin.
    _set(_C.DATASETS.FPN_SHAPES, "ROOT", "")
    # Number of training and validation images.
    _set(_C.DATASETS.FPN_SHAPES, "NUM_TRAIN", 1000)
    _set(_C.DATASETS.FPN_SHAPES, "NUM_VAL", 100)
    # Image width and height, pixels (object sizes span 8..400 px at 512).
    _set(_C.DATASETS.FPN_SHAPES, "IMAGE_SIZE", 512)
    # Random seed of the training split (validation uses SEED + 1).
    _set(_C.DATASETS.FPN_SHAPES, "SEED", 0)

    if was_frozen:
        _C.freeze()
    return _C


def get_plugin_cfg() -> CN:
    """Detectron2's default config with the plugin's keys added."""
    return add_fpn_plugin_config(get_cfg())


def detectron2_config_file(name: str) -> str:
    """Path of one of Detectron2's built-in configs, e.g.
    ``"COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"``.

    Unlike ``detectron2.model_zoo.get_config_file`` this does not import ``pkg_resources``
    (gone from setuptools >= 81).
    """
    spec = importlib.util.find_spec("detectron2")
    candidates = []
    for root in spec.submodule_search_locations or []:
        candidates.append(os.path.join(root, "model_zoo", "configs", name))
        candidates.append(os.path.join(os.path.dirname(root), "configs", name))  # source checkout
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"Detectron2's built-in config {name!r} was not found (looked in {candidates}). "
        "Install Detectron2 from its source so its configs are included (see README.md)."
    )


def fall_back_to_cpu(cfg: CN) -> Optional[str]:
    """Set ``MODEL.DEVICE`` to "cpu" (in place, ``cfg`` not frozen) when it names CUDA and no GPU is
    available, as the tools do rather than fail; returns the message to show then, else None."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        message = f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no GPU is available: running on CPU."
        cfg.MODEL.DEVICE = "cpu"
        return message
    return None
