"""Input checks of the exported detectors: a bad image gets a one-line error naming the input and
the fix, instead of a failure deep inside the program."""

import torch

__all__ = ["check_image"]


def check_image(image, channels: int = 3, min_size: int = 128, max_size: int = 4096) -> None:
    """``ValueError`` unless ``image`` is a (channels, H, W) float32 tensor with
    ``min_size`` <= H, W <= ``max_size``."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(
            f"image: expected a torch.Tensor (3, H, W) float32, got {type(image).__name__}; "
            "convert it with torch.as_tensor(array.transpose(2, 0, 1)).float()."
        )
    if image.dtype != torch.float32:
        raise ValueError(
            f"image: dtype {image.dtype}, expected torch.float32 pixel values in 0..255; "
            "use image.float()."
        )
    if image.dim() != 3 or image.shape[0] != channels:
        raise ValueError(
            f"image: shape {tuple(image.shape)}, expected ({channels}, H, W) (channels first, "
            f"one image, no batch dimension); use array.transpose(2, 0, 1) for an H x W x "
            f"{channels} array, or image[0] for a batch of one."
        )
    height, width = image.shape[1:]
    if height == 0 or width == 0:
        raise ValueError(f"image: empty ({height} x {width} pixels); give a non-empty image.")
    if not (min_size <= height <= max_size and min_size <= width <= max_size):
        raise ValueError(
            f"image: {height} x {width} pixels, outside the {min_size}..{max_size} pixels per side "
            "the program was exported for; resize it as DefaultPredictor does "
            "(INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST)."
        )
