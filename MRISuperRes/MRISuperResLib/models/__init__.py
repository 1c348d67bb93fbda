"""2D super-resolution networks (registered by name) and the model registry that `models.json` describes."""

from .architectures import ARCHITECTURES, build_architecture, register_architecture
from .registry import ModelCard, ModelRegistry, load_network

__all__ = ["ARCHITECTURES", "build_architecture", "register_architecture", "ModelCard", "ModelRegistry",
           "load_network"]
