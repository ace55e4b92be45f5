"""nptrack: live analysis of in situ electron-microscopy series of supported nanoparticles."""

__version__ = "0.1.0"

__all__ = ["__version__"]
