"""The backbone and the heads compiled by inductor for inference (``MODEL.ACCEL.COMPILE``).

``torch.compile`` turns a module's forward into one generated program: on CPU, convolutions with
their weights packed once for oneDNN, batch norm folded (``freezing``), and the element-wise
layers fused into the loops around them. Compiled here, on a detector:

- the backbone (bottom-up network and neck, one program);
- the RPN head (or RetinaNet's head);
- the box head's convs and fcs and the box predictor, the mask and keypoint heads' layers (the
  RoI count is a dynamic size: one program serves any number of RoIs).

Proposals, NMS, RoI pooling and the post-processing stay eager (Detectron2's code, data-dependent
sizes). Inference only (eval, no gradients): training runs the eager forward. The compiled
programs are made on the first call and on every new input size of the backbone (static shapes:
images padded to one size compile once); parameters loaded later (``load_state_dict``, training
steps) are read by the program, which takes them as inputs. Outputs equal the eager ones to float
rounding (fused and reordered sums), not bit for bit.

The compiled callables live outside the module's parameters and ``state_dict`` and are not copied
or pickled (:class:`Strategy`'s transient state): a copy compiles again on its first call.
"""

import types
from typing import Optional

import torch
from torch import nn

from detectron2.modeling.backbone import Backbone

from .strategy import Strategy, apply_strategy

__all__ = ["CompiledForward", "CompiledLayers", "compiles", "apply_compile"]


def _entry(method, *args):
    return method(*args)


def compiles(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether a call of ``module`` on ``x`` runs its compiled program: inference (eval, no
    gradients), not inside tracing, scripting or another compilation, a non-empty input."""
    return not (
        module.training
        or torch.is_grad_enabled()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or x.numel() == 0
    )


class _Compiled(Strategy):
    _transient = ("_compiled_program",)
    #: The first dimension of the input is the RoI count, which varies from call to call.
    dynamic_rois: bool = False

    def _run_compiled(self, method, x: torch.Tensor, *args):
        if self.dynamic_rois and x.shape[0] < 2:
            return method(x, *args)  # sizes 0 and 1 are specialised by the compiler: eager
        program = self.__dict__.get("_compiled_program")
        if program is None:
            # A code object of its own, so that the compiler's cache (kept per code object) and
            # its recompile limit belong to this module alone.
            entry = types.FunctionType(_entry.__code__.replace(), _entry.__globals__, "_entry")
            program = torch.compile(
                entry,
                dynamic=None if self.dynamic_rois else False,
                options={"freezing": True},
            )
            self.__dict__["_compiled_program"] = program
        if self.dynamic_rois:
            torch._dynamo.maybe_mark_dynamic(x, 0)
        return program(method, x, *args)


class CompiledForward(_Compiled):
    """On a backbone or a head: its ``forward`` in inference runs the compiled program."""

    def forward(self, x, *args):
        first = x[0] if isinstance(x, (list, tuple)) else x
        if not compiles(self, first):
            return super().forward(x, *args)
        return self._run_compiled(super().forward, x, *args)


class CompiledLayers(_Compiled):
    """On a mask or keypoint head: its ``layers`` (the convs on the pooled RoI features, (R, C, M,
    M)) in inference run the compiled program; the rest of its forward stays eager."""

    def layers(self, x):
        if not compiles(self, x):
            return super().layers(x)
        return self._run_compiled(super().layers, x)


def _child(module: Optional[nn.Module], name: str) -> Optional[nn.Module]:
    child = getattr(module, name, None) if module is not None else None
    return child if isinstance(child, nn.Module) else None


def apply_compile(model: nn.Module) -> int:
    """The compile strategies on ``model``'s backbone and heads (``model`` a detector with a
    ``backbone``, or a backbone), in place; returns how many modules."""
    targets = []
    backbone = model if isinstance(model, Backbone) else _child(model, "backbone")
    if backbone is not None:
        targets.append((backbone, CompiledForward, False))
    targets.append(
        (_child(_child(model, "proposal_generator"), "rpn_head"), CompiledForward, False)
    )
    targets.append((_child(model, "head"), CompiledForward, False))  # RetinaNet
    roi_heads = _child(model, "roi_heads")
    for name in ("box_head", "box_predictor"):
        targets.append((_child(roi_heads, name), CompiledForward, True))
    for name in ("mask_head", "keypoint_head"):
        head = _child(roi_heads, name)
        if head is not None and callable(getattr(head, "layers", None)):
            targets.append((head, CompiledLayers, True))
    count = 0
    for module, strategy, dynamic_rois in targets:
        # A head that is not called as one module (Cascade R-CNN's ModuleList of box heads) stays.
        if module is not None and type(module).forward is not nn.Module.forward:
            apply_strategy(module, strategy, dynamic_rois=dynamic_rois)
            count += 1
    return count
