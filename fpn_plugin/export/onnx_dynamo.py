"""ONNX from a ``torch.export`` program (``torch.onnx.export(..., dynamo=True)``), and its run in
ONNX Runtime.

The dynamic sizes of the program (image height and width) and its data-dependent ones (detection
counts) become symbolic ONNX dimensions. torchvision's operators are translated by the
exporter's own library (onnxscript's torch_lib): ``torchvision::nms`` to ``NonMaxSuppression``
and ``torchvision::roi_align`` to ``RoiAlign`` (``half_pixel`` for ``aligned=True``, i.e.
Detectron2's ROIAlignV2, which needs opset >= 16; ``sampling_ratio=0``, the adaptive sampling
Detectron2 uses, means the same in both). ONNX Runtime's results equal torchvision's
(tests/export/test_onnx_dynamo.py), so no translation of the plugin's own is needed; other
operators can be given in ``custom_translation_table``.

Known limit (torch 2.14): one ``ExportedProgram`` object converts to ONNX once per process; a
second conversion of the same object fails in the exporter's decomposition step
(``PendingUnbackedSymbolNotFound`` on the data-dependent sizes). Convert the program returned by
``torch.export.load`` (or a new export) instead. Different programs convert one after another.
"""

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .common import ExportError, first_line
from .fake_kernels import register_fake_kernels

__all__ = ["DYNAMO_OPSET", "export_onnx_dynamo", "onnx_session", "run_onnx_dynamo"]

#: Opset of the dynamo exporter's files: the lowest its operator library is written for
#: (ROIAlignV2's half-pixel RoiAlign needs >= 16).
DYNAMO_OPSET = 18

_PATH = "ONNX (dynamo exporter)"


def export_onnx_dynamo(
    program_or_module: Union[torch.export.ExportedProgram, torch.nn.Module],
    path: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    args: Optional[Tuple] = None,
    dynamic_shapes=None,
    opset: int = DYNAMO_OPSET,
    custom_translation_table: Optional[Dict[Callable, Callable]] = None,
    optimize: bool = True,
) -> str:
    """Write the ONNX file ``path`` of an ``ExportedProgram`` (or of a module, exported first with
    ``args`` and ``dynamic_shapes``); returns ``path``.

    ``custom_translation_table`` maps torch operators (e.g. ``torch.ops.my_lib.my_op.default``)
    to onnxscript functions, for operators the exporter's library lacks. Raises
    :class:`ExportError` with the exporter's reason.
    """
    register_fake_kernels()
    if opset < 16:
        raise ExportError(
            _PATH,
            f"opset {opset} has no half-pixel RoiAlign (ROIAlignV2) and is below what the "
            "exporter's operator library is written for",
            f"opset {DYNAMO_OPSET}",
        )
    program = program_or_module
    if not isinstance(program, torch.export.ExportedProgram):
        if args is None:
            raise ValueError("args: a module needs sample inputs (args=...) to be exported")
        try:
            with torch.no_grad():
                program = torch.export.export(program, tuple(args), dynamic_shapes=dynamic_shapes)
        except Exception as e:
            raise ExportError(
                "torch.export", first_line(e), "a module torch.export can trace"
            ) from e
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ExportError(
            _PATH,
            f"the package {e.name!r} is not installed",
            "pip install onnx onnxscript onnxruntime (or: pip install -e '.[export]')",
        ) from e
    table = {torch.ops.aten.sort.stable: _sort_stable}
    table.update(custom_translation_table or {})
    try:
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset,
            custom_translation_table=table,
            optimize=optimize,
            verbose=False,
        )
        onnx_program.save(path)
    except Exception as e:
        raise ExportError(_PATH, first_line(e), "the .pt2 program (torch.export.load)") from e
    return path


def _sort_stable(self, *, stable=None, dim: int = -1, descending: bool = False):
    """``aten::sort.stable`` (the sort of NMS's kept boxes by score) as ONNX ``TopK`` of all the
    elements: ``TopK`` puts equal elements in index order, which is a stable sort."""
    from onnxscript import opset18 as op

    size = op.Reshape(op.Gather(op.Shape(self), dim, axis=0), op.Constant(value_ints=[1]))
    return op.TopK(self, size, axis=dim, largest=descending, sorted=True)


def onnx_session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session of the file ``path`` (``threads`` intra-op threads; default
    torch's thread count)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError(
            "ONNX Runtime", "the 'onnxruntime' package is not installed", "pip install onnxruntime"
        ) from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or max(1, torch.get_num_threads())
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx_dynamo(path_or_session, *inputs) -> Tuple[torch.Tensor, ...]:
    """Outputs of an ONNX file (a path, or a session from :func:`onnx_session`) on ``inputs``
    (tensors or arrays, in the file's input order), as CPU tensors in its output order."""
    session = onnx_session(path_or_session) if isinstance(path_or_session, str) else path_or_session
    names = [i.name for i in session.get_inputs()]
    if len(inputs) != len(names):
        raise ValueError(f"inputs: the ONNX file takes {len(names)} ({names}), got {len(inputs)}")
    feed = {
        n: (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
        for n, x in zip(names, inputs)
    }
    return tuple(torch.from_numpy(o) for o in session.run(None, feed))
