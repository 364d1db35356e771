#!/usr/bin/env python
"""Train and evaluate an fpn_plugin detector (YAML config) with Detectron2's training loop.

Same flags as Detectron2's tools/train_net.py:

    python tools/train_net.py --config-file configs/quickstart.yaml
    python tools/train_net.py --config-file configs/fpn_r50.yaml --num-gpus 8 \
        MODEL.WEIGHTS /path/R-50.pkl
    python tools/train_net.py --config-file configs/fpn_r50.yaml --eval-only \
        MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file ... --resume   # continue from the last checkpoint

Datasets: ``fpn_shapes_train``/``fpn_shapes_val`` (embedded, generated on first use; the panoptic
variant ``fpn_shapes_panoptic_{train,val}[_separated|_stuffonly]`` for Panoptic FPN), Detectron2's
built-in COCO names (``coco_2017_train``... under $DETECTRON2_DATASETS), and any COCO-format
folder given with ``--coco-dataset NAME JSON IMAGE_ROOT`` (repeatable).
``--num-gpus N`` without GPUs runs N CPU processes (gloo).
"""

import tool_startup  # noqa: F401  (first: Detectron2 without the TorchScript warning)

from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from fpn_plugin.accel.cpu_allocator import add_system_malloc_argument
from fpn_plugin.data import register_coco_folder, register_shapes_datasets_from_config
from fpn_plugin.engine import (
    FPNTrainer,
    launch_tool,
    load_plugin_config,
    load_weights_for_evaluation,
    prepare_process,
)


def main(args):
    cfg = load_plugin_config(args.config_file, args.opts)
    prepare_process(cfg, args)  # in each process of --num-gpus N
    cfg.freeze()
    default_setup(cfg, args)
    register_shapes_datasets_from_config(cfg)
    for name, json_file, image_root in args.coco_dataset or []:
        register_coco_folder(name, json_file, image_root)
    if args.eval_only:
        model = FPNTrainer.build_model(cfg)
        load_weights_for_evaluation(model, cfg, resume=args.resume)
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
        "--coco-dataset",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format folder under NAME (use it in DATASETS.TRAIN/TEST); repeatable",
    )
    add_system_malloc_argument(parser)
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    launch_tool(main, args, "train_net.py")
