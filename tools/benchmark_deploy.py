#!/usr/bin/env python
"""Deployment speed: the plugin's detector eager, compiled, as an AOTInductor package and as ONNX
in ONNX Runtime, against Detectron2's eager model, per image, in one run.

    python tools/benchmark_deploy.py                       # R50-FPN Faster R-CNN, 800x1333, CPU
    python tools/benchmark_deploy.py --aoti model.pt2 --onnx model.onnx --pt2 program.pt2
    python tools/benchmark_deploy.py --export-dir deploy/  # export what is missing there first
    python tools/benchmark_deploy.py --images a.jpg b.jpg --reps 5 MODEL.ACCEL.ROI_ALIGN torch

Models: Detectron2's ``--reference-config`` (default COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml)
with random weights scaled by ``make_trained_like`` (seed 0: every run builds the same weights),
and the plugin's ``--config-file`` (default configs/fpn_r50.yaml) loaded from its state_dict, run
as the tools run it (``MODEL.ACCEL``). ``MODEL.ACCEL.COMPILE True`` is timed too where the config
has that key. Artefacts are given as paths (exported from these same weights, e.g. by an earlier
``--export-dir`` run), so their compile time is not in the timing; ``--export-dir`` exports the
missing ones first (RetinaNet: ``fpn_plugin.export.retinanet``). Trailing ``KEY VALUE`` pairs
override the plugin's config. Output: a Markdown table, one row per artefact, with seconds per
image (median of ``--reps`` passes, all artefacts alternating), the ratio to Detectron2, and the
largest box and score differences of its detections from Detectron2's; with ``--profile``, each
runner's time on the first image by kind of operator (``fpn_bench.profile``).
"""

import argparse
import os
import sys

import numpy as np
import tool_startup  # noqa: F401  (first: Detectron2 without the TorchScript warning)
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import fpn_plugin  # noqa: F401  (registers the components)
from fpn_bench import deploy
from fpn_plugin.accel import accelerate
from fpn_plugin.config import detectron2_config_file, get_plugin_cfg
from fpn_plugin.utils.testing import make_trained_like

D2_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
PLUGIN_CONFIG = "configs/fpn_r50.yaml"
REFERENCE = "detectron2 eager"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", default=PLUGIN_CONFIG, help="the plugin's config")
    p.add_argument(
        "--reference-config",
        default=D2_CONFIG,
        help="Detectron2's model-zoo config of the same detector (its weights load into ours)",
    )
    p.add_argument("--pt2", default=None, help="torch.export program (.pt2) to time")
    p.add_argument("--aoti", default=None, help="AOTInductor package (.pt2) to time")
    p.add_argument("--onnx", default=None, help="ONNX file to time in ONNX Runtime")
    p.add_argument(
        "--export-dir", default=None, help="export the artefacts not given into this folder first"
    )
    p.add_argument(
        "--images", nargs="+", default=None, help="photos, resized like DefaultPredictor"
    )
    p.add_argument(
        "--skip",
        default="",
        help="comma-separated artefacts neither exported nor timed, of compile,pt2,onnx,aoti",
    )
    p.add_argument("--size", default="800x1333", help="HxW of the generated image (no --images)")
    p.add_argument("--reps", type=int, default=3, help="timed passes (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print where each runner's time goes, by kind of operator (torch.profiler; "
        "ONNX Runtime left out)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the config")
    return p


def _images(args, cfg):
    if not args.images:
        h, w = (int(v) for v in args.size.lower().split("x"))
        g = torch.Generator().manual_seed(0)
        coarse = torch.rand(1, 3, h // 32, w // 32, generator=g)
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
        return [(0.8 * smooth + 0.2 * torch.rand(3, h, w, generator=g)) * 255]
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image

    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    out = []
    for path in args.images:
        if not os.path.isfile(path):
            sys.exit(f"benchmark_deploy.py: --images: no file {path!r}")
        img = read_image(path, format=cfg.INPUT.FORMAT)
        img = aug.get_transform(img).apply_image(img)
        out.append(torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))).float())
    return out


def build(args):
    """(Detectron2's model or None, the plugin's cfg, the plugin's state_dict source model)."""
    cfg = get_plugin_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    ref = None
    if args.reference_config.lower() != "none":
        ref_cfg = get_cfg()
        ref_cfg.merge_from_file(detectron2_config_file(args.reference_config))
        ref_cfg.MODEL.DEVICE, ref_cfg.MODEL.WEIGHTS = "cpu", ""
        ref = build_model(ref_cfg).eval()
        make_trained_like(ref)
    return ref, cfg


def plugin_model(cfg, state_dict, opts=()):
    c = cfg.clone()
    c.merge_from_list(list(opts))
    torch.manual_seed(0)
    model = build_model(c).eval()
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    else:
        make_trained_like(model)
    return accelerate(model, c)


def export_missing(args, model, image):
    """Export the artefacts not given on the command line into ``--export-dir``, as
    tools/export_model.py does: each from a program of its own (a program traced again, by ONNX
    or AOTInductor, cannot be traced a second time in the same process)."""
    from fpn_plugin.export import ExportError, compile_aoti, save_program
    from fpn_plugin.export.onnx_dynamo import export_onnx_dynamo
    from fpn_plugin.export.to_folder import detector_program

    os.makedirs(args.export_dir, exist_ok=True)
    if not args.pt2 and "pt2" not in args.skip:
        args.pt2 = os.path.join(args.export_dir, "model.pt2")
        program, info = detector_program(model, image)
        save_program(program, args.pt2, info)
    if not args.onnx and "onnx" not in args.skip:
        program, info = detector_program(model, image)
        path = os.path.join(args.export_dir, "model.onnx")
        try:
            args.onnx = export_onnx_dynamo(program, path, ["image"], info["output_names"])
        except ExportError as e:
            print(f"note: ONNX not timed: {e}")
    if not args.aoti and "aoti" not in args.skip:
        program, info = detector_program(model, image)
        args.aoti = compile_aoti(program, os.path.join(args.export_dir, "model_aoti.pt2"), info)


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    args.skip = [a for a in args.skip.split(",") if a]
    unknown = sorted(set(args.skip) - {"compile", "pt2", "onnx", "aoti"})
    if unknown:
        parser.error(f"--skip: unknown {unknown}; use some of compile,pt2,onnx,aoti")
    torch.set_num_threads(args.threads)
    ref, cfg = build(args)
    images = _images(args, cfg)
    runners = {}
    if ref is not None:
        runners[REFERENCE] = deploy.eager_runner(ref)
    state = ref.state_dict() if ref is not None else None
    ours = plugin_model(cfg, state)
    runners["plugin eager (MODEL.ACCEL)"] = deploy.eager_runner(ours)
    if "compile" in args.skip:
        print("note: --skip compile: MODEL.ACCEL.COMPILE not timed")
    elif "COMPILE" in cfg.MODEL.ACCEL:
        compiled = plugin_model(cfg, state, ["MODEL.ACCEL.COMPILE", True])
        runners["plugin MODEL.ACCEL.COMPILE"] = deploy.eager_runner(compiled)
    else:
        print("note: MODEL.ACCEL.COMPILE is not a key of this config: not timed")
    if args.export_dir:
        export_missing(args, ours, images[0][:, : images[0].shape[1] // 2 + 1])
    for name, path, make in (
        ("pt2 (torch.export)", args.pt2, deploy.pt2_runner),
        ("AOTInductor package", args.aoti, deploy.aoti_runner),
        ("ONNX Runtime", args.onnx, lambda p: deploy.onnx_runner(p, args.threads)),
    ):
        if path:
            runners[name] = make(path)
        else:
            print(f"note: no {name} artefact given: not timed")
    reference = REFERENCE if ref is not None else "plugin eager (MODEL.ACCEL)"
    rows = deploy.benchmark(runners, images, reference, reps=args.reps, warmup=args.warmup)
    print(
        f"torch {torch.__version__}, {args.threads} threads, images "
        f"{[tuple(i.shape[1:]) for i in images]}, median of {args.reps} passes"
    )
    print(deploy.format_table(rows, reference))
    if args.profile:
        from fpn_bench.profile import format_profile, matmul_rate, multiply_adds, op_profile

        profiles = {
            name: op_profile(lambda run=run: run(images[0]), reps=args.reps)
            for name, run in runners.items()
            if name != "ONNX Runtime"  # its kernels run outside torch's profiler
        }
        print(f"\nseconds per call on the first image, by kind of operator (mean of {args.reps}):")
        print(format_profile(profiles))
        if ref is not None:
            macs, rate = multiply_adds(ref, images[0]), matmul_rate()
            print(
                f"\n{macs / 1e9:.1f} G multiply-adds on the first image (fvcore); a float32 matrix "
                f"product runs {rate / 1e9:.1f} G/s on {args.threads} threads: at that rate the "
                f"image takes {macs / rate:.2f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
