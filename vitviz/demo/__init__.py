"""The bundled offline demo: synthetic texture scenes with known masks, the demo ViT's
training, and faithfulness metrics."""

from vitviz.demo.scenes import CLASSES, Scene, generate_scene

__all__ = ["CLASSES", "Scene", "generate_scene"]
