"""Model files: the bundle format, exports (ONNX, torch.export, torchvision), safe imports, transfer, the loader."""

from workbench.weights.loader import load_model_file, model_factory

__all__ = ["load_model_file", "model_factory"]
