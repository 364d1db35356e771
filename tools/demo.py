#!/usr/bin/env python
"""Run a detector built from fpn_plugin's components on images (or a video), draw its detections.

Same flags as Detectron2's demo/demo.py:

    python tools/demo.py --config-file configs/quickstart.yaml --input img1.jpg img2.png \\
        --output out/ --opts MODEL.WEIGHTS output/quickstart/model_final.pth
    python tools/demo.py --config-file ... --input 'photos/*.jpg' --output out/ --color-by-level

``--input`` takes image files, folders (every image in them) and globs. ``--output`` is a folder
(an existing folder, or a path ending with ``/`` or without an extension; created if needed; each
output keeps its input's basename, ``.png`` unless the input is a PNG or JPEG) or, for one input,
an image file (``out.png``, ``out.jpg``). There is no on-screen display, so ``--output`` is
required. An image that cannot be read is reported and skipped; the tool then exits with status 1,
naming the images it could not read.

Next to every output image ``X`` the tool writes ``X.json``: the drawn detections, boxes in
XYXY image pixels with their scores, classes, class names and ``pred_levels``, the pyramid level
(2 for P2, ...) each detection's RoI was pooled from (``LevelMappingROIHeads`` records it;
``null`` for ROI heads that do not).

``--color-by-level`` colours every detection by that level -- P2 red, P3 orange, P4 green,
P5 blue, P6 purple -- and draws a legend in the top-left corner, so that the paper's level
mapping (Eqn. 1: small objects from fine levels, large ones from coarse levels) can be seen at
work. The JSON then also holds the legend: each level's colour and swatch rectangle.

A Panoptic FPN config (``configs/quickstart_panoptic.yaml``) draws the panoptic segmentation
(Detectron2's ``draw_panoptic_seg``: stuff regions and the things above the threshold), and the
JSON also lists its segments: id, thing or stuff, class, score and area in pixels. A semantic
segmentation config draws the semantic labels and lists the classes present.

With ``--video-input`` the output is a video (``.mp4``, codec mp4v) and its JSON holds the
detections of every frame.
"""

import argparse
import logging
import math
import sys
from typing import Optional, Sequence

import tool_startup  # noqa: F401  (first: Detectron2 without the TorchScript warning)

from detectron2.utils.logger import setup_logger

from fpn_apps.demo import (
    DemoError,
    DetectionDemo,
    load_demo_config,
    plan_outputs,
    plan_video_output,
    resolve_inputs,
)
from fpn_plugin.accel.cpu_allocator import add_system_malloc_argument
from fpn_plugin.engine import prepare_process

logger = logging.getLogger("fpn_plugin.demo")


def score_threshold(text: str) -> float:
    """``--confidence-threshold``'s type: a score in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also rejects nan
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a score: pass a number in [0, 1], e.g. 0.5"
        )
    return value


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="fpn_plugin demo: draw a detector's predictions on images or a video"
    )
    parser.add_argument(
        "--config-file",
        default="configs/quickstart.yaml",
        metavar="FILE",
        help="path to config file",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        help="image files, folders or globs, e.g. 'directory/*.jpg' "
        "(quote globs so the tool expands them)",
    )
    parser.add_argument("--video-input", help="path to a video file (needs opencv-python)")
    parser.add_argument(
        "--output",
        help="output folder, or output image file for a single input; "
        "each output X gets an X.json of its detections",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=score_threshold,
        default=0.5,
        metavar="SCORE",
        help="minimum score for instance predictions to be shown, in [0, 1]",
    )
    parser.add_argument(
        "--color-by-level",
        action="store_true",
        help="colour each detection by the pyramid level (P2 red, P3 orange, P4 green, P5 blue, "
        "P6 purple) its RoI was pooled from, and draw a legend",
    )
    add_system_malloc_argument(parser)
    parser.add_argument(
        "--opts",
        help="modify config options using the command-line 'KEY VALUE' pairs",
        default=[],
        nargs=argparse.REMAINDER,
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    if bool(args.input) == bool(args.video_input):
        parser.error("give exactly one of --input and --video-input")
    if not args.output:
        parser.error("--output is required (this tool has no on-screen display)")
    setup_logger(name="fvcore")
    setup_logger(name="fpn_plugin")
    logger.info(f"Arguments: {args}")

    # The inputs and outputs are checked before the model is built, so that a typo fails at once.
    if args.video_input:
        video_output = plan_video_output(args.video_input, args.output)
    else:
        inputs = resolve_inputs(args.input)
        outputs = plan_outputs(inputs, args.output)
    cfg = load_demo_config(args.config_file, args.opts, args.confidence_threshold)
    prepare_process(cfg, args, log=logger.info)
    cfg.freeze()

    demo = DetectionDemo.from_config(cfg, args.confidence_threshold, args.color_by_level)
    if args.video_input:
        demo.process_video(args.video_input, video_output)
        return
    unreadable = demo.process_images(inputs, outputs)
    if unreadable:
        raise DemoError(
            f"could not read {len(unreadable)} of {len(inputs)} input images "
            f"(the others were written): {', '.join(unreadable)}"
        )


if __name__ == "__main__":
    try:
        main()
    except DemoError as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        sys.exit(1)
