"""Weights: importing the official checkpoints, the engine's model-folder format, and the model store."""
from .install import install_official
from .model_folder import LoadedModel, load_model, save_model
from .store import (InstalledModel, available_models, default_model, default_model_name, list_models, medals_home,
                    resolve_model)

__all__ = ["InstalledModel", "LoadedModel", "available_models", "default_model", "default_model_name",
           "install_official", "list_models", "load_model", "medals_home", "resolve_model", "save_model"]
