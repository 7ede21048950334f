"""S4AL: semantic segmentation with active semi-supervised learning."""

__version__ = "0.1.0"
