"""Training methods of the federated engine, one module each.

* :mod:`clapjax.methods.clap`: CLAP (CVPR 2024).
"""

from clapjax.methods.clap import Clap

__all__ = ["Clap"]
