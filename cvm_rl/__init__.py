"""cvm-rl: offer and channel optimization for long-run customer value."""

__version__ = "0.1.0"
