"""Reference computations that the fast paths are checked against.

``preprocess``/``activate`` need only NumPy; ``predict`` (the PyTorch reference path) imports
torch when called.
"""

from __future__ import annotations

from medtrt.reference.numpy_ref import activate, preprocess
from medtrt.reference.torch_ref import Prediction, predict, rank

__all__ = ["Prediction", "activate", "predict", "preprocess", "rank"]
