"""Test helpers shared across folders (imported as a module, not through conftest, because
several folders have a conftest.py of their own)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The shared data folder: $KRONBIT_DATA_ROOT, else ../shared/data beside the repository."""
    return Path(os.environ.get("KRONBIT_DATA_ROOT", REPO.parent / "shared" / "data"))


WORDS = ("good great fine nice bad awful poor sad movie film plot actor the a is was very not "
         "and it this that of story fun dull").split()


def make_tiny_bert(path: Path, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """A random-init BERT with a tiny word-level vocabulary, saved as an HF directory."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    # transformers 5 takes the vocabulary itself (vocab=), not a vocab_file path.
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=hidden * 2, max_position_embeddings=64)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_tiny_sst2(root: Path, n_train: int = 64, n_dev: int = 32, seed: int = 0) -> Path:
    """A learnable toy SST-2 in the GLUE TSV layout: label 1 iff a positive word appears."""
    import random

    rng = random.Random(seed)
    pos, neg = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]
    filler = ["movie", "film", "plot", "actor", "the", "a", "is", "was", "very", "story"]
    folder = root / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            words = rng.sample(filler, 4) + [rng.choice(pos if label else neg)]
            rng.shuffle(words)
            lines.append(f"{' '.join(words)}\t{label}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (folder / "test.tsv").write_text("index\tsentence\n0\tgood movie\n")
    return root


def single_thread():
    """Generator for an autouse fixture: tiny-model tests run on one thread. On a CPU shared with
    other jobs, two OpenMP threads on tiny matrices (SVD, small matmuls) can be many times slower
    and far less steady than one; one thread loses nothing at these sizes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_gpt2(vocab_size: int = 1000, n_embd: int = 32, n_layer: int = 4, n_head: int = 2,
              n_positions: int = 128, seed: int = 0, **config_kwargs):
    """A random-init ``GPT2LMHeadModel`` (HF ``Conv1D`` projections, tied embeddings), eval mode."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     n_positions=n_positions, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
                     **config_kwargs)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(vocab_size: int = 1000, hidden_size: int = 32, num_hidden_layers: int = 4,
               num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 64,
               max_position_embeddings: int = 128, seed: int = 0, **config_kwargs):
    """A random-init ``LlamaForCausalLM`` (grouped-query attention, ``nn.Linear``), eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                      num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                      intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                      bos_token_id=0, eos_token_id=1, pad_token_id=None, **config_kwargs)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()
