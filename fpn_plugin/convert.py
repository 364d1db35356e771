"""Moving a config between Detectron2's FPN components and the plugin's: a swap of names.

Every FPN name of Detectron2 has a plugin counterpart that builds the same model, with the same
parameter names (Detectron2's checkpoints load strictly) and the same outputs:

=====================================  ======================================
Detectron2                             fpn_plugin
=====================================  ======================================
``build_resnet_fpn_backbone``          ``build_fpn_neck_backbone``
``build_retinanet_resnet_fpn_backbone``  ``build_retinanet_fpn_neck_backbone``
``DefaultAnchorGenerator``             ``SharedAnchorGenerator``
``StandardROIHeads``                   ``LevelMappingROIHeads``
=====================================  ======================================

(``MODEL.BACKBONE.NAME``, ``MODEL.ANCHOR_GENERATOR.NAME``, ``MODEL.ROI_HEADS.NAME``.) Other RoI
heads (``CascadeROIHeads``, PointRend's, DensePose's, ...) keep their names: they pool through
Detectron2's ``ROIPooler``, which :func:`fpn_plugin.accelerate` replaces by the plugin's pooler.

:func:`to_plugin` and :func:`to_detectron2` convert a loaded config (``_BASE_`` chains already
merged by Detectron2's loader); :func:`load_config` loads a YAML file for either;
:func:`dump_changes` writes a config as the keys that differ from the defaults.
"""

import copy
import importlib
from typing import Callable, Dict, List, Sequence, Tuple

import yaml

from detectron2.config import CfgNode, get_cfg

from .config import add_fpn_plugin_config, get_plugin_cfg

__all__ = [
    "DETECTRON2_TO_PLUGIN",
    "PLUGIN_TO_DETECTRON2",
    "is_fpn_config",
    "to_plugin",
    "to_detectron2",
    "default_config",
    "load_config",
    "resolve_config_adder",
    "dump_changes",
]

#: Config key -> {Detectron2's registered name: the plugin's counterpart}.
DETECTRON2_TO_PLUGIN: Dict[str, Dict[str, str]] = {
    "MODEL.BACKBONE.NAME": {
        "build_resnet_fpn_backbone": "build_fpn_neck_backbone",
        "build_retinanet_resnet_fpn_backbone": "build_retinanet_fpn_neck_backbone",
    },
    "MODEL.ANCHOR_GENERATOR.NAME": {"DefaultAnchorGenerator": "SharedAnchorGenerator"},
    "MODEL.ROI_HEADS.NAME": {"StandardROIHeads": "LevelMappingROIHeads"},
}
#: Config key -> {the plugin's registered name: Detectron2's}.
PLUGIN_TO_DETECTRON2: Dict[str, Dict[str, str]] = {
    key: {ours: theirs for theirs, ours in names.items()}
    for key, names in DETECTRON2_TO_PLUGIN.items()
}

# The extra levels each Detectron2 FPN builder makes, as MODEL.FPN.EXTRA_LEVELS names them.
_EXTRA_LEVELS = {
    "build_resnet_fpn_backbone": "p6_subsample",
    "build_retinanet_resnet_fpn_backbone": "p6p7_c5",
}
# Plugin keys that change the architecture, with the value Detectron2's FPN has.
_ARCHITECTURE_KEYS = {
    "MODEL.FPN.BOTTOM_UP": "build_resnet_backbone",
    "MODEL.FPN.UPSAMPLE": "nearest",
    "MODEL.FPN.TOP_DOWN": True,
    "MODEL.FPN.LATERAL": True,
    "MODEL.FPN.FINEST_ONLY": False,
}
# Eqn. (1)'s constants, hard-coded in Detectron2's ROIPooler (canonical_box_size, canonical_level).
_LEVEL_MAPPING_KEYS = {
    "MODEL.ROI_HEADS.CANONICAL_BOX_SIZE": 224,
    "MODEL.ROI_HEADS.CANONICAL_LEVEL": 4,
}


def _get(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg: CfgNode, key: str, value) -> None:
    section, leaf = key.rsplit(".", 1)
    _get(cfg, section)[leaf] = value


def _leaves(node, prefix: str = "") -> Dict[str, object]:
    """Dotted key -> value of every leaf of ``node``."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def is_fpn_config(cfg: CfgNode) -> bool:
    """Whether ``cfg``'s backbone is one of Detectron2's FPN builders."""
    return cfg.MODEL.BACKBONE.NAME in DETECTRON2_TO_PLUGIN["MODEL.BACKBONE.NAME"]


def to_plugin(cfg: CfgNode) -> CfgNode:
    """The plugin's config of the model that Detectron2's config ``cfg`` builds: a copy with the
    plugin's keys added (at their defaults, which are Detectron2's FPN) and the names swapped.

    ``ValueError`` when ``cfg``'s backbone is not one of Detectron2's FPN builders.
    """
    if not is_fpn_config(cfg):
        raise ValueError(
            f"MODEL.BACKBONE.NAME = {cfg.MODEL.BACKBONE.NAME!r} is not one of Detectron2's FPN "
            f"builders ({sorted(DETECTRON2_TO_PLUGIN['MODEL.BACKBONE.NAME'])}): there is no "
            "plugin component to swap in. Convert a config of an FPN model."
        )
    out = add_fpn_plugin_config(copy.deepcopy(cfg))
    out.defrost()
    for key, names in DETECTRON2_TO_PLUGIN.items():
        value = _get(out, key)
        _set(out, key, names.get(value, value))
    return out


def _expanded_sizes(sizes, scales_per_octave: int):
    """Detectron2's explicit anchor sizes for ``SCALES_PER_OCTAVE`` n: s * 2**(i/n), as
    :class:`~fpn_plugin.SharedAnchorGenerator` computes them (s itself for i = 0, as Detectron2's
    configs list it)."""
    n = int(scales_per_octave)

    def octave(group):
        return [s * 2 ** (i / n) if i else s for s in group for i in range(n)]

    if n == 1:
        return sizes
    if sizes and not isinstance(sizes[0], (list, tuple)):
        return octave(sizes)
    return [octave(group) for group in sizes]


def to_detectron2(cfg: CfgNode, defaults: CfgNode = None) -> Tuple[CfgNode, List[str]]:
    """Detectron2's config of the model that the plugin's config ``cfg`` builds, and notes on what
    was left out.

    The names are swapped back, ``MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE`` is written out as
    Detectron2's explicit ``SIZES``, and the plugin's keys are removed: those that run the model
    (``MODEL.ACCEL``) or are read only by components Detectron2 does not have (``MODEL.PAFPN``,
    ``MODEL.TIMM``, ...) without a note, ``MODEL.ROI_HEADS.PRED_LEVELS`` True with one.
    ``ValueError`` naming the key when the model has no Detectron2 counterpart (another neck or
    bottom-up network, the paper's ablations, other extra levels or level-mapping constants).

    Args:
        cfg: a plugin config (with the plugin's keys), ``_BASE_`` already merged.
        defaults: Detectron2's defaults the result keeps the keys of (``get_cfg()``, plus any
            project's keys, e.g. PointRend's); None for ``get_cfg()``.
    """
    cfg = add_fpn_plugin_config(copy.deepcopy(cfg))
    cfg.defrost()
    backbone = cfg.MODEL.BACKBONE.NAME
    if backbone not in PLUGIN_TO_DETECTRON2["MODEL.BACKBONE.NAME"]:
        raise ValueError(
            f"MODEL.BACKBONE.NAME = {backbone!r} has no Detectron2 counterpart; only "
            f"{sorted(PLUGIN_TO_DETECTRON2['MODEL.BACKBONE.NAME'])} (Detectron2's FPN) convert."
        )
    for key, value in _ARCHITECTURE_KEYS.items():
        if _get(cfg, key) != value:
            raise ValueError(
                f"{key} = {_get(cfg, key)!r}: Detectron2's FPN has {value!r} only; this model "
                "has no Detectron2 config."
            )
    extra = cfg.MODEL.FPN.EXTRA_LEVELS
    if backbone == "build_retinanet_fpn_neck_backbone":
        target = "build_retinanet_resnet_fpn_backbone"
    else:
        matches = [name for name, levels in _EXTRA_LEVELS.items() if levels == extra]
        if not matches:
            raise ValueError(
                f"MODEL.FPN.EXTRA_LEVELS = {extra!r}: Detectron2's FPN builders make "
                f"{sorted(_EXTRA_LEVELS.values())} only; this model has no Detectron2 config."
            )
        target = matches[0]
    # Detectron2's builders read P6 (P6, P7) from P5 (C5) by name.
    if list(cfg.MODEL.FPN.IN_FEATURES)[-1] != "res5":
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES = {list(cfg.MODEL.FPN.IN_FEATURES)}: Detectron2's FPN builders "
            "make their extra levels from res5, so the last input must be 'res5'."
        )
    if cfg.MODEL.ROI_HEADS.NAME == "LevelMappingROIHeads":
        for key, value in _LEVEL_MAPPING_KEYS.items():
            if _get(cfg, key) != value:
                raise ValueError(
                    f"{key} = {_get(cfg, key)!r}: Detectron2's ROIPooler uses {value} only."
                )
    notes = []
    if cfg.MODEL.ROI_HEADS.PRED_LEVELS:
        notes.append(
            "MODEL.ROI_HEADS.PRED_LEVELS True left out: Detectron2's RoI heads do not output "
            "pred_levels."
        )
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = _expanded_sizes(
        cfg.MODEL.ANCHOR_GENERATOR.SIZES, cfg.MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE
    )
    cfg.MODEL.BACKBONE.NAME = target
    for key, names in PLUGIN_TO_DETECTRON2.items():
        if key != "MODEL.BACKBONE.NAME":
            value = _get(cfg, key)
            _set(cfg, key, names.get(value, value))
    defaults = get_cfg() if defaults is None else defaults
    _remove_keys_not_in(cfg, defaults)
    return cfg, notes


def _remove_keys_not_in(cfg: CfgNode, reference: CfgNode) -> None:
    for k in list(cfg.keys()):
        if k not in reference:
            del cfg[k]
        elif isinstance(cfg[k], dict) and isinstance(reference[k], dict):
            _remove_keys_not_in(cfg[k], reference[k])


def resolve_config_adder(name: str) -> Callable[[CfgNode], None]:
    """The function ``"module.function"`` names, e.g. ``"densepose.add_densepose_config"``: a
    project's function that adds its keys to a config (importing the module also registers the
    project's components)."""
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(
            f"config adder {name!r} cannot be imported ({e}); give 'module.function', e.g. "
            "'densepose.add_densepose_config' or "
            "'detectron2.projects.point_rend.add_pointrend_config'."
        ) from e


def default_config(
    plugin: bool, config_adders: Sequence[Callable[[CfgNode], None]] = ()
) -> CfgNode:
    """Detectron2's ``get_cfg()`` (+ the plugin's keys if ``plugin``), with each of
    ``config_adders`` (a project's ``add_*_config``) applied."""
    defaults = get_plugin_cfg() if plugin else get_cfg()
    for add in config_adders:
        add(defaults)
    return defaults


def load_config(
    path: str, plugin: bool, config_adders: Sequence[Callable[[CfgNode], None]] = ()
) -> Tuple[CfgNode, CfgNode]:
    """(the YAML config ``path`` merged over the defaults, the defaults), ``_BASE_`` chains merged
    by Detectron2's loader; the defaults are :func:`default_config` ``(plugin, config_adders)``."""
    defaults = default_config(plugin, config_adders)
    cfg = copy.deepcopy(defaults)
    cfg.merge_from_file(path)
    return cfg, defaults


def _plain(value):
    """YAML-safe form of a config value (tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _same(a, b) -> bool:
    return _plain(a) == _plain(b)


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for lists of scalars (``[p2, p3]``), as the
    project's configs are written."""


def _represent_list(dumper, data):
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_changes(cfg: CfgNode, defaults: CfgNode, header: str = "") -> str:
    """YAML of the keys whose values in ``cfg`` differ from ``defaults`` (and ``VERSION``):
    merged over ``defaults`` it gives ``cfg`` back. ``header`` (lines) goes first, as comments."""
    changed: Dict[str, object] = {}
    base = _leaves(defaults)
    for key, value in _leaves(cfg).items():
        if key == "VERSION" or key not in base or not _same(value, base[key]):
            node = changed
            *sections, leaf = key.split(".")
            for section in sections:
                node = node.setdefault(section, {})
            node[leaf] = _plain(value)
    text = yaml.dump(changed, Dumper=_Dumper, default_flow_style=False, sort_keys=False, width=100)
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + text
