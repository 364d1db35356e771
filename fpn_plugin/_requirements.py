"""Fail early, and helpfully, when Detectron2 is missing (it is not on PyPI)."""

INSTALL_HINT = (
    "fpn_plugin needs Detectron2, which is not on PyPI. Install it with\n"
    "    python -m pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'\n"
    "or, offline, from a local checkout of that repository:\n"
    "    python -m pip install --no-build-isolation /path/to/detectron2\n"
    "(see README.md, 'Install')."
)


def check_detectron2() -> None:
    """Raise ``ImportError`` with install instructions if ``detectron2`` cannot be imported."""
    try:
        import detectron2  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{e}.\n{INSTALL_HINT}") from e
