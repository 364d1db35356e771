#!/usr/bin/env python
"""fpn_plugin: Feature Pyramid Networks as Detectron2 components.

Detectron2 itself is not on PyPI and is not listed here: install it first (README.md, "Install").
"""

from setuptools import find_packages, setup

setup(
    name="fpn_plugin",
    version="0.2.0",
    description="Feature Pyramid Networks (Lin et al. 2017) as registered Detectron2 components",
    long_description=open("README.md", encoding="utf-8").read()
    if __import__("os").path.exists("README.md")
    else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fpn_plugin", "fpn_plugin.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "numpy",
        "Pillow",
        "matplotlib",
        # Detectron2's Visualizer imports cv2; the headless build has no GUI dependencies.
        "opencv-python-headless>=4.10",
        "pycocotools>=2.0.2",
        "fvcore",
        "tabulate",
        "tqdm",
    ],
    extras_require={
        # tools/export_model.py --format onnx, and its --check of ONNX files; onnxscript is the
        # dynamo exporter's operator library (torchvision's nms and roi_align included).
        "export": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.7"],
        # MODEL.FPN.BOTTOM_UP "build_timm_backbone": any timm network as the bottom-up pathway.
        "timm": ["timm>=1.0"],
        # Panoptic quality (PQ) without panopticapi, which is not on PyPI (fpn_plugin/evaluation).
        "panoptic": ["torchmetrics>=1.0"],
        "test": [
            "pytest>=7",
            # make test runs the files on 2 processes (-n 2 --dist loadfile): half the wall time
            # on a 2-core machine, where the suite alone keeps about one core busy on average.
            "pytest-xdist>=3",
            "onnx>=1.15",
            "onnxruntime>=1.17",
            "onnxscript>=0.7",
            "timm>=1.0",
            "torchmetrics>=1.0",
        ],
        # The formatter and linter that make test runs (ruff.toml).
        "lint": ["ruff>=0.5"],
    },
)
