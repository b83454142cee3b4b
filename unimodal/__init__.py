"""unimodal: one transformer with shared weights that understands and generates images.

Importing this package loads neither deepspeed nor webdataset (training and data live outside it).
"""

from .config import ModelConfig
from .layout import Batch, Example, SequenceLayout
from .model import UniModalModel, UniModalOutput
from .tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = ["ModelConfig", "Batch", "Example", "SequenceLayout", "Tokenizer", "UniModalModel", "UniModalOutput",
           "__version__"]
