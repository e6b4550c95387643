"""image-emotion: which emotion does an image evoke."""

__version__ = "0.1.0"
