"""What tools/benchmark_deploy.py runs: detectors as callables, timed alternately against
Detectron2's eager model, with their detections compared to it.

Every artefact is a *runner*: ``runner(image) -> (boxes (R, 4), scores (R,), classes (R,))`` for
one (3, H, W) float32 image as the network sees it (resized as ``DefaultPredictor`` does), the
detections before the rescale to the original image. Runners exist for an eager model
(:func:`eager_runner`), a ``.pt2`` program (:func:`pt2_runner`), an AOTInductor package
(:func:`aoti_runner`) and an ONNX file in ONNX Runtime (:func:`onnx_runner`); any other callable
of that form can be timed too. :func:`benchmark` times them one after the other, repetition by
repetition (``fpn_bench.timing.time_alternately``), so all see the same machine load.
"""

import math
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.meta_arch.retinanet import RetinaNet

from fpn_bench.timing import time_alternately
from fpn_plugin.export import compare_detections

Detections = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Runner = Callable[[torch.Tensor], Detections]

__all__ = [
    "Runner",
    "aoti_runner",
    "benchmark",
    "eager_runner",
    "format_table",
    "onnx_runner",
    "pt2_runner",
]


def eager_runner(model: nn.Module) -> Runner:
    """A Detectron2 detector (``GeneralizedRCNN`` or ``RetinaNet``, eval mode) as a runner."""
    if isinstance(model, RetinaNet):
        from fpn_plugin.export.retinanet import retinanet_detections

        def run(image):
            d = retinanet_detections(model, image)
            return d["pred_boxes"], d["scores"], d["pred_classes"]

        return run
    if isinstance(model, GeneralizedRCNN):

        def run(image):
            with torch.no_grad():
                r = model.inference([{"image": image}], do_postprocess=False)[0]
            return r.pred_boxes.tensor, r.scores, r.pred_classes

        return run
    raise TypeError(f"model: a GeneralizedRCNN or RetinaNet, got {type(model).__name__}")


#: Output names of boxes, scores and classes: those fpn_plugin.export's files record (the fields of
#: Instances) and those of RetinaNet's bare program (fpn_plugin.export.retinanet).
_NAMES = (("pred_boxes", "scores", "pred_classes"), ("boxes", "scores", "classes"))


def _picker(names: Optional[Sequence[str]]) -> Callable[[Sequence[torch.Tensor]], Detections]:
    """outputs -> (boxes, scores, classes), by the artefact's output names when it records them,
    else its first three outputs."""
    names = list(names or ())
    for wanted in _NAMES:
        if all(n in names for n in wanted):
            index = [names.index(n) for n in wanted]
            return lambda outputs: tuple(tuple(outputs)[i] for i in index)
    return lambda outputs: tuple(tuple(outputs)[:3])


def _pt2_names(path: str) -> Optional[List[str]]:
    """The output names a ``.pt2`` program or AOTInductor package of :mod:`fpn_plugin.export`
    records, or None (e.g. RetinaNet's, which records none)."""
    from fpn_plugin.export import ExportedDetector

    try:
        return ExportedDetector(path).output_names
    except ValueError:
        return None


def pt2_runner(path_or_module) -> Runner:
    """A ``torch.export.save``-d program (its path, or the module of the loaded program:
    ``torch.export.load(path).module()``); boxes, scores and classes are found by the output
    names the file records, else they are its first three outputs."""
    module, pick = path_or_module, _picker(None)
    if isinstance(module, str):
        pick = _picker(_pt2_names(module))
        module = torch.export.load(module).module()

    def run(image):
        with torch.no_grad():
            return pick(module(image))

    return run


def aoti_runner(path: str) -> Runner:
    """An AOTInductor package (``torch._inductor.aoti_compile_and_package``) of such a program."""
    compiled = torch._inductor.aoti_load_package(path)
    pick = _picker(_pt2_names(path))

    def run(image):
        with torch.no_grad():
            return pick(compiled(image))

    return run


def onnx_runner(path: str, threads: Optional[int] = None) -> Runner:
    """An ONNX file (input ``image``; first outputs boxes, scores, classes) in ONNX Runtime."""
    from fpn_plugin.export.onnx_dynamo import onnx_session, run_onnx_dynamo

    session = onnx_session(path, threads)
    pick = _picker([o.name for o in session.get_outputs()])

    def run(image):
        return pick(run_onnx_dynamo(session, image))

    return run


def benchmark(
    runners: Mapping[str, Runner],
    images: Sequence[torch.Tensor],
    reference: str,
    reps: int = 3,
    warmup: int = 1,
) -> List[Dict]:
    """One row per runner: median seconds per image over ``reps`` passes over ``images`` (after
    ``warmup`` untimed ones, runners alternating), its ratio to ``runners[reference]``, and its
    detections against the reference's on every image (largest box and score differences,
    whether classes and counts agree: :func:`fpn_plugin.export.compare_detections`, tolerance
    1e-3)."""
    if reference not in runners:
        raise ValueError(f"reference: {reference!r} is not one of the runners {list(runners)}")
    detections = {
        name: [_as_dict(run(img)) for img in images] for name, run in runners.items()
    }  # one run each also warms the artefacts up
    fns = {name: _over(run, images) for name, run in runners.items()}
    medians, _ = time_alternately(fns, reps=reps, warmup=warmup)
    rows = []
    for name in runners:
        diffs = [compare_detections(r, g) for r, g in zip(detections[reference], detections[name])]
        rows.append(
            {
                "name": name,
                "seconds_per_image": medians[name] / len(images),
                "ratio": medians[name] / medians[reference],
                "detections": sum(len(d["scores"]) for d in detections[name]),
                "agree": all(d["ok"] == 1.0 for d in diffs),
                "max_box_diff": _max(d["max_box_diff"] for d in diffs),
                "max_score_diff": _max(d["max_score_diff"] for d in diffs),
            }
        )
    return rows


def _as_dict(out: Detections) -> Dict[str, torch.Tensor]:
    boxes, scores, classes = out
    return {"pred_boxes": boxes, "scores": scores, "pred_classes": classes}


def _over(run: Runner, images: Sequence[torch.Tensor]) -> Callable[[], None]:
    def go():
        for img in images:
            run(img)

    return go


def _max(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return max(values) if values else math.nan


def format_table(rows: List[Dict], reference: str) -> str:
    """Markdown table of :func:`benchmark`'s rows."""
    lines = [
        f"| artefact | s / image | ratio vs {reference} | detections | agree | max box diff (px) "
        "| max score diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['seconds_per_image']:.3f} | {r['ratio']:.2f} | {r['detections']} "
            f"| {'yes' if r['agree'] else 'NO'} | {r['max_box_diff']:.2e} "
            f"| {r['max_score_diff']:.2e} |"
        )
    return "\n".join(lines)


def existing(path: Optional[str]) -> Optional[str]:
    """``path`` if it names a file, else None."""
    return path if path and os.path.isfile(path) else None
