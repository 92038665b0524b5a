"""hagan-kit: HA-GAN (Hierarchical Amortized GAN, Sun et al., IEEE JBHI 2022) for 3D medical
images."""

from .config import Config, preset

__version__ = "0.1.0"
__all__ = ["Config", "preset", "__version__"]
