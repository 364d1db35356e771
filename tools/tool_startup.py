"""What every tool runs first, before anything imports Detectron2.

Importing Detectron2 (and fvcore, which it imports) compiles a few helper functions with
``torch.jit.script``, and torch (2.14 here) warns at each such call that ``torch.jit.script`` is
deprecated: two ``FutureWarning`` lines at every start of every tool that the user can do nothing
about. Detectron2 is imported here with exactly that warning ignored; later imports find the
modules already loaded. Every other warning is shown, and so is this one when ``torch.jit.script``
is called later, e.g. by ``tools/export_model.py --export-method scripting``.

A tool imports this module before its other third-party, Detectron2 and fpn_plugin imports::

    import tool_startup  # noqa: F401  (first: Detectron2 imported without the TorchScript warning)
"""

import warnings

#: The message of torch's deprecation warning of ``torch.jit.script``, as a regular expression.
TORCHSCRIPT_DEPRECATION = r"`torch\.jit\.script` is deprecated"

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=TORCHSCRIPT_DEPRECATION, category=FutureWarning)
    import detectron2.engine  # noqa: F401  (imports fvcore.nn and detectron2.modeling)
