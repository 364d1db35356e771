"""How a model is run fast: execution strategies applied from outside the paper's classes.

One entry point, :func:`accelerate` (driven by ``MODEL.ACCEL.*``), rewrites a built model in
place, the plugin's or Detectron2's own; each strategy lives in its own module:

- :mod:`.blocked_layout`: CPU float32 inference of a ResNet bottom-up and the laterals in oneDNN's
  blocked layout (bit-identical);
- :mod:`.in_place_merge`: the top-down merge added in place (bit-identical);
- :mod:`.anchor_cache`: anchor grids kept between calls (bit-identical);
- :mod:`.multilevel_pooler` (with the kernel in :mod:`.roi_align`): every pyramid level pooled
  in one embedding-bag call, with a workspace;
- :mod:`.channels_last`, :mod:`.autocast`, :mod:`.frozen_bn_fold`: memory layout, inference
  mixed precision, FrozenBN folding (equal to float rounding);
- :mod:`.compile`: the backbone and heads compiled by inductor for inference (equal to float
  rounding);
- :mod:`.devices`: the device types where each default-on strategy runs (measured there);
- :mod:`.cpu_allocator`: the tools' glibc malloc setting for CPU runs.

:mod:`.strategy` is the mechanism: a module keeps its parameters and gets a subclass; scripting
compiles a plain copy and leaves the eager model as it is.
"""

from .accelerate import AccelOptions, accelerate
from .strategy import plain_class, remove_strategies, strategies_of

__all__ = ["AccelOptions", "accelerate", "plain_class", "remove_strategies", "strategies_of"]
