"""MABP: Model with Adaptive Binding Prototypes for generalised referring expression segmentation."""
from .config import MABPConfig
from .registry import PRESETS, build_mabp, get_config, load_checkpoint, save_checkpoint

__all__ = ["MABPConfig", "PRESETS", "build_mabp", "get_config", "load_checkpoint", "save_checkpoint"]
