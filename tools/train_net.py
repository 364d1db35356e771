#!/usr/bin/env python
"""Train and evaluate a detector built from fpn_plugin's components, with Detectron2's training loop.

Same flags as Detectron2's tools/train_net.py:

    python tools/train_net.py --config-file configs/quickstart.yaml
    python tools/train_net.py --config-file configs/fpn_r50.yaml --num-gpus 8 MODEL.WEIGHTS /path/R-50.pkl
    python tools/train_net.py --config-file configs/fpn_r50.yaml --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file ... --resume          # continue from the last checkpoint

Datasets: ``fpn_shapes_train``/``fpn_shapes_val`` (embedded, generated on first use), Detectron2's
built-in COCO names (``coco_2017_train``... under $DETECTRON2_DATASETS), and any COCO-format
folder given with ``--coco-dataset NAME JSON IMAGE_ROOT`` (repeatable).
``--num-gpus N`` without GPUs runs N CPU processes (gloo).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import fpn_plugin  # noqa: E402  (registers the components)
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from fpn_plugin.config import fall_back_to_cpu  # noqa: E402
from fpn_plugin.accel.cpu_allocator import add_system_malloc_argument, keep_freed_memory_for_tool  # noqa: E402
from fpn_plugin.data import register_coco_folder, register_shapes_datasets_from_config  # noqa: E402
from fpn_plugin.engine.trainer import FPNTrainer  # noqa: E402


def setup(args):
    cfg = fpn_plugin.get_plugin_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    message = fall_back_to_cpu(cfg)
    if message:
        print(message)
    message = keep_freed_memory_for_tool(args, cfg.MODEL.DEVICE)  # in each process of --num-gpus N
    if message:
        print(message)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def register_datasets(cfg, args):
    register_shapes_datasets_from_config(cfg)
    for name, json_file, image_root in args.coco_dataset or []:
        register_coco_folder(name, json_file, image_root)


def main(args):
    cfg = setup(args)
    register_datasets(cfg, args)
    if args.eval_only:
        model = FPNTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = FPNTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = FPNTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def get_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--coco-dataset", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format folder under NAME (use it in DATASETS.TRAIN/TEST); repeatable",
    )
    add_system_malloc_argument(parser)
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
