"""MedalS: the Medal S text- and mask-prompted 3D segmentation engine."""
__version__ = "0.1.0"
