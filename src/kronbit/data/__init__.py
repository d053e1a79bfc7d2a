"""Data: GLUE tasks (``glue``), metrics (``metrics``), tokenized features (``features``),
language-modelling text (``lm``), data augmentation (``augment``, ``wordnet``)."""
