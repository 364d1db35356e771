"""The plugin's warnings reach the run's log.txt, as Detectron2's own messages do."""

import logging

from fpn_plugin.engine.trainer import FPNTrainer
from tests.engine.test_training import _cleanup_catalog, data_root, tiny_cfg  # noqa: F401


def test_plugin_warnings_are_written_to_log_txt(data_root, tmp_path, caplog):
    cfg = tiny_cfg(data_root, tmp_path, "SOLVER.MAX_ITER", 1)
    FPNTrainer(cfg)
    with caplog.at_level(logging.WARNING):
        logging.getLogger("fpn_plugin.data.mapper").warning(
            "img.jpg: dropped 2 zero-area or out-of-image box(es)"
        )
    for handler in logging.getLogger("fpn_plugin").handlers:
        # A console handler set up by an earlier test may write to pytest's closed capture.
        if not getattr(getattr(handler, "stream", None), "closed", False):
            handler.flush()
    assert "img.jpg: dropped 2 zero-area" in (tmp_path / "log.txt").read_text()
    assert "img.jpg: dropped 2" in caplog.text  # and still seen by the root logger's handlers
