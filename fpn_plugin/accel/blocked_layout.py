"""Bit-identical CPU inference of Detectron2's ResNet in oneDNN's blocked memory layout.

On CPU, PyTorch computes float32 convolutions with oneDNN, which works in a blocked layout
(nChw16c: 16 channels innermost). For an NCHW tensor every convolution therefore converts its
input into that layout and its output back: two extra passes over each feature map, each into
freshly allocated memory. Keeping the maps in oneDNN tensors (``Tensor.to_mkldnn()``) from one
layer to the next drops those conversions while calling the same convolution primitive on the
same data, so the results are bit-identical to the NCHW path, not merely close.

The layers between convolutions are reproduced exactly too:

- ReLU, the residual sum and the stem's max-pool are exact on any layout.
- A folded convolution (``MODEL.ACCEL.FOLD_FROZEN_BN``) runs with the very folded weights and
  bias its NCHW forward uses, so it matches that path bit for bit and has no batch-norm pass.
- ``FrozenBatchNorm2d`` (and ``BatchNorm2d`` in eval) is ATen's ``batch_norm``, which computes
  ``y = fma(x, a, b)`` with per-channel ``a, b`` derived from the statistics. oneDNN's batch norm
  given mean 0, variance 1, eps 0, scale ``a`` and shift ``b`` computes the same expression; ``a``
  and ``b`` are read back from ATen itself (``batch_norm`` of ones and zeros), so they carry
  ATen's own rounding.

Whether the two paths agree depends on the PyTorch/oneDNN build and the CPU, so
:func:`blocked_layout_matches` checks it once per process on a small network before the path is
ever used, and everything falls back to the NCHW path if it does not. A convolution that
PyTorch would not run with oneDNN on an NCHW input (:func:`_dense_conv_uses_onednn`) runs on
NCHW here too.

Applied to a neck (:func:`apply_blocked_layout`), three strategies cooperate, each passing oneDNN
tensors to the next as its argument: the neck's forward hands its ResNet bottom-up the image batch
as a oneDNN tensor, the ResNet given a oneDNN input returns oneDNN outputs, and the convolutions
that read those outputs (the laterals, and a P6 conv on C5) take them without conversion and
return NCHW tensors. Everything after the laterals runs on NCHW tensors as before.
"""

import functools
import logging
import weakref
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

from .devices import runs_by_default
from .frozen_bn_fold import FoldedFrozenBN, fold_frozen_batchnorm
from .strategy import Strategy, apply_strategy, plain_class

__all__ = [
    "blocked_layout_matches",
    "resnet_blocked_forward",
    "blocked_conv",
    "supports_blocked_layout",
    "cpu_autocast_enabled",
    "apply_blocked_layout",
    "BlockedLayoutNeck",
    "BlockedLayoutResNet",
    "BlockedLayoutInput",
]

logger = logging.getLogger(__name__)

_NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)
# conv module -> (key, oneDNN weight, bias, affine). Kept outside the modules so that deepcopy,
# pickle and TorchScript never meet oneDNN tensors (which have no storage to copy).
_PREPARED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _relu_like(activation) -> bool:
    return activation in (F.relu, F.relu_, torch.relu, torch.relu_) or type(activation) is nn.ReLU


def _conv_supported(conv: nn.Module) -> bool:
    """A Detectron2 ``Conv2d`` (or plain ``nn.Conv2d``) whose norm and activation can be
    reproduced."""
    cls = plain_class(type(conv))
    if cls is nn.Conv2d:
        return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
    if cls is not Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    norm = conv.norm
    if norm is not None and type(norm) not in _NORMS:
        return False
    if type(norm) is nn.BatchNorm2d and (norm.running_mean is None or not norm.affine):
        return False
    return conv.activation is None or _relu_like(conv.activation)


def supports_blocked_layout(bottom_up: nn.Module) -> bool:
    """Whether ``bottom_up`` is a Detectron2 ``ResNet`` made only of parts this module reproduces:
    ``BasicStem``, ``BottleneckBlock``/``BasicBlock`` (exact classes, no deformable convs), convs
    with ``FrozenBatchNorm2d``/``BatchNorm2d`` or no norm (folded or not), and no classifier
    head."""
    if (
        plain_class(type(bottom_up)) is not ResNet
        or plain_class(type(bottom_up.stem)) is not BasicStem
    ):
        return False
    if bottom_up.num_classes is not None:
        return False
    convs = [bottom_up.stem.conv1]
    for stage in bottom_up.stages:
        for block in stage:
            if plain_class(type(block)) is BottleneckBlock:
                convs += [block.conv1, block.conv2, block.conv3]
            elif plain_class(type(block)) is BasicBlock:
                convs += [block.conv1, block.conv2]
            else:
                return False
            if block.shortcut is not None:
                convs.append(block.shortcut)
    return all(_conv_supported(c) for c in convs)


def cpu_autocast_enabled() -> bool:
    """Whether a ``torch.autocast("cpu", ...)`` region is active: there the caller asked for low
    precision, which this float32 path would silently ignore (``mkldnn_convolution`` is not
    autocast)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # PyTorch < 2.4
        return torch.is_autocast_cpu_enabled()


def _dense_conv_uses_onednn(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """PyTorch's rule (``ConvParams::use_mkldnn``) for a float32 CPU NCHW input: tiny 1x1
    convolutions on one image run on its native kernel instead, whose sums differ from oneDNN's."""
    if not torch.backends.mkldnn.is_available() or not torch._C._get_mkldnn_enabled():
        return False
    kh, kw = conv.weight.shape[-2:]
    strided = any(s != 1 for s in conv.stride)
    dilated = any(d != 1 for d in conv.dilation)
    n, c, h, w = x.shape
    if not (strided or dilated or n >= 16 or kh != 1 or kw != 1 or torch.get_num_threads() > 1):
        return False
    return conv.groups > 1 or (kh > 3 and kw > 3) or n > 1 or n * c * h * w > 20480


def _affine(norm: nn.Module):
    """oneDNN batch-norm arguments (a, b, mean 0, var 1), (C,) each, that compute ATen's eval batch
    norm y = fma(x, a, b); a and b are read back from ATen."""
    channels = norm.running_mean.numel()
    zeros = torch.zeros(channels, dtype=norm.running_mean.dtype)
    ones = torch.ones(1, channels, 1, 1, dtype=norm.running_mean.dtype)
    # a depends on (var, eps, weight) only: with mean and bias 0 the output at x = 1 is a.
    a = F.batch_norm(ones, zeros, norm.running_var, norm.weight, zeros, False, 0.0, norm.eps)
    # At x = 0 the output is b.
    b = F.batch_norm(
        ones * 0, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
    )
    return a.flatten(), b.flatten(), zeros, torch.ones(channels, dtype=zeros.dtype)


def _is_folded(conv: nn.Module) -> bool:
    """Whether ``conv`` computes with FrozenBN folded into its weights (as its NCHW forward does in
    eval)."""
    return isinstance(conv, FoldedFrozenBN) and isinstance(conv.norm, FrozenBatchNorm2d)


def _prepared(conv: nn.Module, x: torch.Tensor):
    """(oneDNN weight, bias or None, (a, b, mean, var) or None): cached per module, rebuilt when a
    parameter or statistic changes (``load_state_dict``, training) -- keyed by the tensors'
    addresses and versions."""
    norm = getattr(conv, "norm", None)
    tensors = [conv.weight] + ([conv.bias] if conv.bias is not None else [])
    if norm is not None:
        tensors += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
    key = tuple((t.data_ptr(), t._version) for t in tensors) + (getattr(norm, "eps", None),)
    cache = _PREPARED.get(conv)
    if cache is None or cache[0] != key:
        with torch.no_grad():
            if _is_folded(conv):
                # The module's own folded tensors: the same numbers its NCHW forward convolves with.
                weight, bias = conv.folded_weight_and_bias()
                affine = None
            else:
                weight = conv.weight.detach()
                bias = conv.bias.detach() if conv.bias is not None else None
                affine = _affine(norm) if norm is not None else None
            # Weights reordered once into the layout the primitive expects (exact: a permutation);
            # a later input of another size that wants another layout gets it reordered by oneDNN.
            weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                weight.to_mkldnn(),
                list(conv.padding),
                list(conv.stride),
                list(conv.dilation),
                conv.groups,
                list(x.shape),
            )
        cache = (key, weight, bias, affine)
        _PREPARED[conv] = cache
    return cache[1:]


def blocked_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` (with its norm and activation) on a oneDNN tensor ``x`` (N, C, H, W); returns
    one."""
    if not _dense_conv_uses_onednn(x, conv):
        return conv(x.to_dense()).to_mkldnn()
    weight, bias, affine = _prepared(conv, x)
    y = torch.mkldnn_convolution(
        x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups
    )
    if affine is not None:
        a, b, mean, var = affine
        y = torch.batch_norm(y, a, b, mean, var, False, 0.0, 0.0, False)  # eps 0: var + eps = 1
    if getattr(conv, "activation", None) is not None:
        y = torch.relu_(y)
    return y


def _block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``BottleneckBlock.forward`` / ``BasicBlock.forward`` on oneDNN tensors."""
    out = torch.relu_(blocked_conv(block.conv1, x))
    if plain_class(type(block)) is BottleneckBlock:
        out = torch.relu_(blocked_conv(block.conv2, out))
        out = blocked_conv(block.conv3, out)
    else:
        out = blocked_conv(block.conv2, out)
    out += blocked_conv(block.shortcut, x) if block.shortcut is not None else x
    return torch.relu_(out)


def resnet_blocked_forward(resnet: ResNet, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``resnet(x)`` for a float32 CPU batch ``x`` (N, 3, H, W), NCHW or already a oneDNN tensor,
    computed in oneDNN's layout.

    Returns ``{name: oneDNN tensor (N, C, H/s, W/s)}`` for ``resnet``'s output features; the caller
    converts with ``.to_dense()`` what it needs as NCHW. Only valid when
    :func:`supports_blocked_layout` is True and under ``torch.no_grad()``.
    """
    outputs = {}
    x = torch.relu_(blocked_conv(resnet.stem.conv1, x if x.is_mkldnn else x.to_mkldnn()))
    x = torch.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # BasicStem's pooling
    if "stem" in resnet._out_features:
        outputs["stem"] = x
    for name, stage in zip(resnet.stage_names, resnet.stages):
        for block in stage:
            x = _block(block, x)
        if name in resnet._out_features:
            outputs[name] = x
    return outputs


@functools.lru_cache(maxsize=None)
def blocked_layout_matches(folded: bool = False) -> bool:
    """Once per process (and per ``folded``): does a small ResNet, with its FrozenBN folded into the
    convolutions or not, give bit-identical features in both layouts here?"""
    if not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    stem = BasicStem(3, 16, norm="FrozenBN")
    blocks = [
        BottleneckBlock(16, 32, bottleneck_channels=16, stride=1, norm="FrozenBN"),
        BottleneckBlock(32, 64, bottleneck_channels=16, stride=2, norm="FrozenBN"),
        BasicBlock(64, 48, stride=2, norm="FrozenBN"),
    ]
    net = ResNet(
        stem, [blocks[:1], blocks[1:2], blocks[2:]], out_features=["res2", "res3", "res4"]
    ).eval()
    # Float32 on both sides even when first called inside a caller's autocast region (the answer is
    # cached for the whole process).
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, FrozenBatchNorm2d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
            if isinstance(m, FrozenBatchNorm2d):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.1)
        if folded:
            fold_frozen_batchnorm(net)
        x = torch.randn(1, 3, 192, 320, generator=g) * 50
        dense = net(x)
        blocked = resnet_blocked_forward(net, x)
    ok = all(torch.equal(dense[k], blocked[k].to_dense()) for k in dense)
    if not ok:
        logger.warning(
            "fpn_plugin: oneDNN blocked-layout inference%s does not reproduce PyTorch's NCHW "
            "results on this machine; using the NCHW path (set MODEL.ACCEL.CPU_BLOCKED_LAYOUT "
            "False to skip this check).",
            " with folded FrozenBN" if folded else "",
        )
    return ok


# --------------------------------------------------------------------------------------------
# The strategies
# --------------------------------------------------------------------------------------------


class BlockedLayoutResNet(Strategy):
    """On a Detectron2 ``ResNet``: given a oneDNN tensor (as its :class:`BlockedLayoutNeck` passes
    it), it runs in oneDNN's layout and returns oneDNN tensors; given an NCHW tensor, the plain
    forward."""

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.is_mkldnn:
            return resnet_blocked_forward(self, x)
        return super().forward(x)


class BlockedLayoutInput(Strategy):
    """On a conv reading the bottom-up outputs: a oneDNN input is convolved without conversion
    (the same primitive, the same result) and the output returned as an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_mkldnn:
            return blocked_conv(self, x).to_dense()
        return super().forward(x)


class BlockedLayoutNeck(Strategy):
    """On an FPN neck (the plugin's or Detectron2's): float32 CPU inference without gradients
    runs its ResNet bottom-up and lateral convs in oneDNN's layout (bit-identical outputs)."""

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if not self.takes_blocked_path(x):
            return super().forward(x)
        # The neck's forward passes x straight to its bottom-up: a oneDNN x asks the ResNet for
        # oneDNN outputs, which only the neck's prepared convolutions read.
        return super().forward(x.to_mkldnn())

    def takes_blocked_path(self, x: torch.Tensor) -> bool:
        """Whether a forward on ``x`` takes the blocked-layout path (else the plain one)."""
        if torch.jit.is_tracing() or self.training or torch.is_grad_enabled():
            return False
        if not runs_by_default("cpu_blocked_layout", x.device):
            return False
        if x.dtype != torch.float32 or x.numel() == 0:
            return False
        if cpu_autocast_enabled():
            # The caller's torch.autocast: its convolutions run in low precision.
            return False
        # Folding leaves convs whose norm is not FrozenBN unfolded, so both kinds are checked.
        folded = any(isinstance(m, FoldedFrozenBN) for m in self.bottom_up.modules())
        return blocked_layout_matches() and (not folded or blocked_layout_matches(folded=True))


def _readers_of_bottom_up(neck: nn.Module):
    """The convs of ``neck`` that read its bottom-up outputs, or None if some other module does."""
    readers = [c for c in neck.lateral_convs if c is not None]
    top_block = neck.top_block
    if top_block is not None and top_block.in_feature in neck.bottom_up.output_shape():
        if not isinstance(getattr(top_block, "p6", None), nn.Conv2d):
            return None  # an unknown block reads C_k: it gets NCHW tensors, so no blocked path
        readers.append(top_block.p6)
    return readers


def apply_blocked_layout(neck: nn.Module) -> bool:
    """Apply the blocked-layout strategies to an FPN ``neck`` whose bottom-up network is supported
    (:func:`supports_blocked_layout`); returns whether they were applied."""
    readers = _readers_of_bottom_up(neck)
    if readers is None or not supports_blocked_layout(neck.bottom_up):
        return False
    if not all(_conv_supported(c) for c in readers):
        return False
    apply_strategy(neck.bottom_up, BlockedLayoutResNet)
    for conv in readers:
        apply_strategy(conv, BlockedLayoutInput)
    apply_strategy(neck, BlockedLayoutNeck)
    return True
