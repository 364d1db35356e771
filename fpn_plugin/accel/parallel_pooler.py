"""The level-mapping pooler's RoI ops run on several threads in inference
(``MODEL.ACCEL.ROI_ALIGN: "parallel"``, and in inference ``"auto"``).

torchvision's CPU RoI ops compute one RoI after another on one thread, and release the GIL while
they run. So, in inference, the RoIs of each level are split into as many parts as PyTorch has
intra-op threads, and the parts are pooled at once on a thread pool. Every output row is still
computed by the same op from the same inputs: the outputs are Detectron2's bit for bit. When
gradients flow to the features the call goes on to the next strategy below this one, or to the
RoI ops level by level (per-part autograd across threads costs more than it saves).
"""

import concurrent.futures
import os
from typing import List, Optional, Tuple

import torch

from detectron2.layers import nonzero_tuple

from ..modeling.pooler import LevelMappingROIPooler
from .blocked_layout import cpu_autocast_enabled
from .strategy import Strategy

__all__ = ["ParallelROIAlign"]

# (process id, workers, pool): a forked child makes its own pool.
_pool: Optional[Tuple[int, int, concurrent.futures.ThreadPoolExecutor]] = None


def _executor(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """A thread pool of ``workers`` threads for this process."""
    global _pool
    if _pool is None or _pool[:2] != (os.getpid(), workers):
        pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="roi_align")
        _pool = (os.getpid(), workers, pool)
    return _pool[2]


class ParallelROIAlign(Strategy):
    """On a :class:`~fpn_plugin.modeling.pooler.LevelMappingROIPooler`: in inference on CPU,
    ``pool`` with each level's RoIs split over PyTorch's intra-op thread count."""

    def pool(self, x: List[torch.Tensor], rois: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and any(f.requires_grad for f in x):
            return super().pool(x, rois, levels)
        threads = torch.get_num_threads()
        if (
            threads < 2
            or x[0].device.type != "cpu"
            or torch.jit.is_tracing()
            or cpu_autocast_enabled()
        ):
            return LevelMappingROIPooler.pool(self, x, rois, levels)  # the RoI ops, one thread
        jobs = []
        for level in range(len(self.level_poolers)):
            inds = nonzero_tuple(levels == level)[0]
            jobs += [(level, part) for part in inds.tensor_split(threads) if part.numel()]

        def run(job):
            level, part = job
            with torch.no_grad():  # grad mode is per thread: the pool's threads get the caller's
                return self.level_poolers[level](x[level], rois[part])

        output = x[0].new_zeros((rois.shape[0], x[0].shape[1]) + self.output_size)
        for (_, part), pooled in zip(jobs, _executor(threads).map(run, jobs)):
            output.index_put_((part,), pooled)
        return output
