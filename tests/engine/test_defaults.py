"""fpn_plugin/engine/defaults.py: what the command-line tools share."""

import argparse
import os

import pytest

from fpn_plugin.engine import launch_tool, load_plugin_config
from tests.conftest import REPO

QUICKSTART = os.path.join(REPO, "configs", "quickstart.yaml")
ONE_PROCESS = argparse.Namespace(num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto")


def test_launch_tool_runs_main_once_with_the_args():
    calls = []
    launch_tool(calls.append, ONE_PROCESS, "tool.py")
    assert calls == [ONE_PROCESS]


@pytest.mark.parametrize("error", [ValueError, FileNotFoundError, PermissionError])
def test_a_bad_input_ends_the_tool_with_one_line_naming_it(error):
    def main(args):
        raise error("--config-file 'x.yaml' does not exist; pass a YAML config")

    with pytest.raises(SystemExit) as e:
        launch_tool(main, ONE_PROCESS, "tool.py")
    # sys.exit(str): the message on stderr, exit status 1, no traceback.
    assert (
        e.value.code == "tool.py: error: --config-file 'x.yaml' does not exist; pass a YAML config"
    )


def test_other_errors_keep_their_traceback():
    def main(args):
        raise RuntimeError("a bug, not an input")

    with pytest.raises(RuntimeError, match="a bug"):
        launch_tool(main, ONE_PROCESS, "tool.py")


def test_a_misspelled_key_in_a_yaml_file_names_the_file_and_the_closest_key(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("MODEL:\n  FPN:\n    OUT_CHANELS: 64\n")
    with pytest.raises(ValueError) as e:
        load_plugin_config(str(config))
    assert str(e.value) == (
        f"{config}: unknown config key MODEL.FPN.OUT_CHANELS; did you mean MODEL.FPN.OUT_CHANNELS?"
    )


def test_a_misspelled_key_on_the_command_line_names_the_closest_key():
    with pytest.raises(ValueError, match=r"^the command line: unknown config key MODEL\.ACEL\."):
        load_plugin_config(QUICKSTART, ["MODEL.ACEL.ROI_ALIGN", "parallel"])
    with pytest.raises(ValueError, match=r"did you mean MODEL\.ACCEL\.ROI_ALIGN\?$"):
        load_plugin_config(QUICKSTART, ["MODEL.ACEL.ROI_ALIGN", "parallel"])


def test_a_key_like_no_other_points_to_the_key_list(tmp_path):
    config = tmp_path / "unknown.yaml"
    config.write_text("ZZZ_NOTHING:\n  QQQ: 1\n")
    with pytest.raises(ValueError, match=r"unknown config key ZZZ_NOTHING; docs/configuration"):
        load_plugin_config(str(config))


def test_valid_files_and_overrides_still_load():
    cfg = load_plugin_config(QUICKSTART, ["MODEL.FPN.OUT_CHANNELS", "32"])
    assert cfg.MODEL.FPN.OUT_CHANNELS == 32
