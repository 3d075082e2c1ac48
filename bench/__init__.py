"""neuron-bench: compare methods that label the units of vision networks with text.

Importing this package stays light: torch and friends load inside the functions that need them.
"""

__version__ = "0.1.0"
