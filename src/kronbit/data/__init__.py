"""Data: GLUE tasks (``glue``), metrics (``metrics``), language-modelling text (later issues)."""
