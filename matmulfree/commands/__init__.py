"""CLI verbs, one module each (see :mod:`matmulfree.cli`)."""
