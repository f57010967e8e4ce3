"""dbgate: a PostgreSQL wire-protocol gateway with a human in the loop."""

__version__ = "0.1.0"
