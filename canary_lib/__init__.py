"""canary_lib: canary-controlled adaptive safe-data interleaving against emergent misalignment."""

__version__ = "0.1.0"
