"""Model-zoo unification: merge heterogeneous classifiers into one over the union of their classes.

See README.md for the product and docs/architecture.md for how the pieces fit.
"""

__version__ = "0.1.0"
