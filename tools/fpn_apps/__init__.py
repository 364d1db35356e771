"""The command-line apps behind the tool scripts: the demo's loop (``tools/demo.py``) and the GPU
check (``tools/gpu_check.py``, with :mod:`.tool_run`, which runs a tool as a subprocess and finds
where a crash lies). The tool scripts import it from tools/, their own folder."""
