"""Network parts (one file each) and the builder that turns a configuration into a model."""
from .medals_net import MedalSNet

__all__ = ["MedalSNet"]
