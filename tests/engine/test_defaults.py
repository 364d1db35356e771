"""fpn_plugin/engine/defaults.py: what the command-line tools share."""

import argparse

import pytest

from fpn_plugin.engine import launch_tool

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
