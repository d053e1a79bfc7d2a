"""Single jobs a user runs: fine-tune a teacher (``finetune``), evaluate on GLUE (``evaluate``),
perplexity of a causal LM (``perplexity``), export to the packed format (``export``), latency of a
packed model against fp32 / bf16 / int8 (``bench``), and the training plumbing they and the runner
share (``training``)."""
