"""Shape functions ("fake kernels") that ``torch.export`` needs exact for the detectors.

torchvision registers the fake kernel of ``torchvision::nms`` with
``ctx.create_unbacked_symint()``, whose lower bound is 2 (torch.compile's 0/1 specialisation).
``torch.export`` turns that bound into a runtime assertion, so an exported detector stops with
``Runtime assertion failed for expression u0 >= 2`` on an image where NMS keeps 0 or 1 boxes.
:func:`register_fake_kernels` registers the same shape function with the true bounds,
0 <= kept <= number of boxes. It must be in effect whenever a graph with ``nms`` is traced:
``torch.export.export``, ``ExportedProgram.run_decompositions``, ``torch.onnx.export`` and
AOTInductor all trace again; a program saved with the true bounds keeps them when loaded.
"""

import torch

__all__ = ["register_fake_kernels"]

_LIBRARY = None  # the torch.library fragment holding the registration, kept alive for the process


def _nms_fake(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Kept indices of ``torchvision::nms``: (K,) int64, 0 <= K <= N for (N, 4) boxes."""
    torch._check(dets.dim() == 2, lambda: f"boxes should be a 2d tensor, got {dets.dim()}D")
    torch._check(dets.size(1) == 4, lambda: f"boxes should have 4 columns, got {dets.size(1)}")
    torch._check(scores.dim() == 1, lambda: f"scores should be a 1d tensor, got {scores.dim()}D")
    torch._check(
        dets.size(0) == scores.size(0),
        lambda: f"boxes and scores differ in length: {dets.size(0)} and {scores.size(0)}",
    )
    kept = torch.library.get_ctx().new_dynamic_size(min=0)
    torch._check(kept <= dets.size(0))
    return dets.new_empty(kept, dtype=torch.long)


def register_fake_kernels() -> None:
    """Register the exact fake kernel of ``torchvision::nms`` (idempotent; for this process)."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    import torchvision  # noqa: F401  (defines the torchvision:: operators)

    library = torch.library.Library("torchvision", "FRAGMENT")
    torch.library.register_fake("torchvision::nms", _nms_fake, lib=library)
    _LIBRARY = library
