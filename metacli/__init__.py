"""metacli: a command-line laboratory for meta-learning research."""

__version__ = "0.1.0"
