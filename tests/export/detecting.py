"""Quickstart-sized RetinaNets that detect like trained ones, and generated images, for the export
tests: :func:`fpn_plugin.utils.testing.make_detecting` (batch-norm statistics from one image, class
logits scaled to +-6 around the prior) on the plugin's configs.
"""

from torch import nn

from fpn_plugin.utils.testing import blob_image as image
from fpn_plugin.utils.testing import build_detecting_model, make_detecting
from tests.conftest import plugin_cfg

__all__ = ["detecting_retinanet", "image", "make_detecting", "save_png"]


def save_png(img, path) -> str:
    """A (3, H, W) float BGR image in [0, 255] written to ``path`` as an RGB 8-bit PNG (the tools
    read it back as BGR, rounded); returns the path as a string."""
    from PIL import Image

    Image.fromarray(img.flip(0).permute(1, 2, 0).round().clamp(0, 255).byte().numpy()).save(path)
    return str(path)


def detecting_retinanet(config: str, img, seed: int = 0) -> nn.Module:
    """The plugin's RetinaNet of ``configs/<config>``, eval mode, detecting on ``img``."""
    return build_detecting_model(plugin_cfg(f"configs/{config}"), img, seed)
