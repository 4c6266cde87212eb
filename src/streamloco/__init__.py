"""streamloco: Streaming DiLoCo pretraining across loosely connected compute islands."""

__version__ = "0.1.0"
