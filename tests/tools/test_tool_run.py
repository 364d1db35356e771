"""tools/fpn_apps/tool_run.py: a tool run by a check, its time limit, the stack of a crash."""

import os
import sys
import textwrap
import time

from fpn_apps.tool_run import crash_stack, locate_crash, run_tool, with_faulthandler

#: A Python program that dies of a segmentation fault in ``crash_here`` (reading address 0).
SEGFAULT = textwrap.dedent("""
    import ctypes

    def crash_here():
        ctypes.string_at(0)

    crash_here()
""")

#: What faulthandler writes when a thread crashes: two threads, the crashing one second.
REPORT = """\
some output
Fatal Python error: Segmentation fault

Thread 0x00007f0000000001 (most recent call first):
  File "/usr/lib/python3.12/threading.py", line 355 in wait
  File "/usr/lib/python3.12/threading.py", line 1030 in _bootstrap

Current thread 0x00007f0000000002 (most recent call first):
  File "/site-packages/torch/nn/modules/conv.py", line 456 in _conv_forward
  File "/repo/fpn_plugin/modeling/neck.py", line 120 in forward
  File "/repo/tools/train_net.py", line 70 in <module>

Extension modules: numpy.core._multiarray_umath, torch._C (total: 2)
"""


def _script(tmp_path, text):
    path = tmp_path / "program.py"
    path.write_text(text)
    return str(path)


def test_a_segfault_is_named_and_its_stack_found(tmp_path):
    script = _script(tmp_path, SEGFAULT)
    run = run_tool([sys.executable, script], str(tmp_path / "plain.log"), timeout=60)
    assert run.crash == "SIGSEGV" and run.returncode < 0 and not run.ok and not run.timed_out
    command, env = with_faulthandler([sys.executable, script])
    assert command[1:3] == ["-X", "faulthandler"] and env["CUDA_LAUNCH_BLOCKING"] == "1"
    again = run_tool(command, str(tmp_path / "fh.log"), timeout=60, env=env)
    assert again.crash == "SIGSEGV"
    frames = crash_stack(open(again.log).read())
    assert [f["function"] for f in frames] == ["string_at", "crash_here", "<module>"]
    assert frames[1]["file"] == script and frames[1]["line"] == 5
    # The program's folder taken as the plugin's: the plugin made the crashing call.
    assert locate_crash(frames[1:], [str(tmp_path)])["in_plugin"] is True
    where = locate_crash(frames, [str(tmp_path)])
    assert where["in_plugin"] is False and where["innermost_plugin_frame"] == frames[1]
    assert (
        where["verdict"].startswith("library (ctypes)")
        and "reached from the plugin" in where["verdict"]
    )


def test_the_crashing_threads_stack_is_read_from_faulthandlers_report():
    frames = crash_stack(REPORT)
    assert [f["function"] for f in frames] == ["_conv_forward", "forward", "<module>"]
    assert frames[0] == {
        "file": "/site-packages/torch/nn/modules/conv.py",
        "line": 456,
        "function": "_conv_forward",
    }
    assert crash_stack("no report here") == []

    library = locate_crash(frames, ["/repo/fpn_plugin", "/repo/tools"])
    assert library["in_plugin"] is False
    assert library["verdict"].startswith(
        "library (torch) at /site-packages/torch/nn/modules/conv.py:456"
    )
    assert "plugin at /repo/fpn_plugin/modeling/neck.py:120 (forward)" in library["verdict"]
    plugin = locate_crash(frames[1:], ["/repo/fpn_plugin"])
    assert plugin["in_plugin"] is True and plugin["verdict"].startswith("plugin:")
    outside = locate_crash(frames, ["/elsewhere"])
    assert outside["innermost_plugin_frame"] is None and "no plugin frame" in outside["verdict"]
    assert "no Python stack" in locate_crash([], ["/repo"])["verdict"]


def test_a_dataloader_workers_death_counts_as_a_crash(tmp_path):
    message = "RuntimeError: DataLoader worker (pid 123) is killed by signal: Segmentation fault. "
    script = _script(tmp_path, f"import sys\nprint({message!r})\nsys.exit(1)\n")
    run = run_tool([sys.executable, script], str(tmp_path / "w.log"), timeout=60)
    assert run.returncode == 1 and run.crash == "SIGSEGV in a DataLoader worker"
    fine = run_tool([sys.executable, "-c", "print('fine')"], str(tmp_path / "ok.log"), timeout=60)
    assert fine.ok and fine.crash is None and "fine" in open(fine.log).read()


def test_the_time_limit_stops_the_run_and_its_children(tmp_path):
    marker = tmp_path / "child_alive"
    script = _script(
        tmp_path,
        textwrap.dedent(f"""
        import subprocess, sys, time
        # A child that would leave a file behind after 3 s: killed with its parent, it leaves none.
        late = "import time; time.sleep(3); open({str(marker)!r}, 'w')"
        subprocess.Popen([sys.executable, "-c", late])
        print("child started", flush=True)
        time.sleep(60)
    """),
    )
    run = run_tool([sys.executable, script], str(tmp_path / "slow.log"), timeout=3)
    assert run.timed_out and run.returncode is None and not run.ok and run.seconds < 30
    log = open(run.log).read()
    assert "child started" in log and "time limit" in log
    time.sleep(4)
    assert not os.path.exists(marker)
