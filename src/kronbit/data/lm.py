"""Language-modelling text: files -> token ids -> packed fixed-length blocks for ``Trainer``.

The recipe is the usual one for causal-LM pre-training and distillation (nanoGPT, HF
``run_clm``): tokenise each document, concatenate with EOS *between* documents, cut the stream
into ``block_size`` blocks. Every block is full, so no padding reaches the loss; with
``drop_remainder=False`` the short last block is padded and its padding masked out of the loss
(``labels == -100``, ``attention_mask == 0``). Labels equal the inputs: HF causal LMs shift them.

WikiText ``*.tokens`` files are read exactly as they are (already word-tokenised, `` @-@ ``,
``<unk>`` and all), as the GPT-2 evaluations do; nothing is detokenised here.

Big files are tokenised in chunks (with a progress bar). Chunks are cut only at newlines where
byte-level BPE pre-tokenisation would split anyway, so the ids are identical to tokenising the
whole text at once (tested for the GPT-2 tokenizer); ``chunk_chars=None`` disables chunking.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..core.config import Config
from ..core.errors import ConfigError, DataError
from ..core.paths import data_root

# Short names for the local corpora (paths relative to the data root).
LM_CORPORA = {
    "wikitext2-test": "lm/wikitext-2/wiki.test.tokens",
    "wikitext2-valid": "lm/wikitext-2/wiki.valid.tokens",
    "tinyshakespeare": "lm/tinyshakespeare/input.txt",
}
DEFAULT_CHUNK_CHARS = 1 << 16


def resolve_lm_file(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A corpus name from ``LM_CORPORA`` (under the data root) or a file path -> an existing file."""
    s = str(name_or_path)
    if s in LM_CORPORA:
        path = Path(root) if root is not None else data_root()
        path = path / LM_CORPORA[s]
        if not path.is_file():
            raise DataError(f"corpus '{s}' not found at {path}; set KRONBIT_DATA_ROOT to the folder holding lm/")
        return path
    path = Path(s).expanduser()
    if not path.is_file():
        raise DataError(f"text file not found: {s} (or give a corpus name: {', '.join(LM_CORPORA)})")
    return path


def read_text(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """The file's text, unchanged (UTF-8)."""
    path = resolve_lm_file(name_or_path, root)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None


# ---------------------------------------------------------------------------------------------
# Tokenising
# ---------------------------------------------------------------------------------------------

def _is_safe_cut(text: str, p: int) -> bool:
    """May ``text`` be cut before index ``p`` without changing byte-level BPE pre-tokens?

    GPT-2's pre-tokeniser keeps a run of whitespace together and gives the run's last space to
    the following word. A cut right after a newline is invisible when the next piece starts with
    one space then a non-space (WikiText's `` \\n = Title``) or when the newline stands alone
    between two non-space characters; other cuts (inside ``"\\n\\n"``, say) would change tokens.
    """
    if p <= 1 or p >= len(text) or text[p - 1] != "\n":
        return False
    nxt = text[p]
    if nxt == " ":
        return p + 1 < len(text) and not text[p + 1].isspace()
    return not nxt.isspace() and not text[p - 2].isspace()


def split_text(text: str, chunk_chars: int | None = DEFAULT_CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into pieces of about ``chunk_chars`` characters at safe newlines."""
    if not chunk_chars or len(text) <= chunk_chars:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        p = start + chunk_chars
        while p < len(text):
            p = text.find("\n", p)
            if p < 0:
                p = len(text)
                break
            p += 1
            if _is_safe_cut(text, p):
                break
        pieces.append(text[start:p])
        start = p
    return pieces


def tokenize_text(tokenizer, text: str, *, chunk_chars: int | None = DEFAULT_CHUNK_CHARS,
                  max_tokens: int | None = None, progress: bool | None = None,
                  desc: str = "tokenising") -> list[int]:
    """Token ids of ``text`` (no special tokens added), in chunks; stops early at ``max_tokens``.

    ``progress=None`` shows a bar only on a terminal and only for text of several chunks.
    """
    pieces = split_text(text, chunk_chars)
    disable = (len(pieces) < 4 or None) if progress is None else not progress
    ids: list[int] = []
    group = 8  # fast tokenizers encode a batch of strings in parallel
    with tqdm(total=len(text), unit="char", unit_scale=True, desc=desc, disable=disable) as bar:
        for i in range(0, len(pieces), group):
            batch = pieces[i:i + group]
            # verbose=False: a chunk is far longer than the model's context; that is expected here.
            for piece, piece_ids in zip(batch, tokenizer(batch, add_special_tokens=False,
                                                          verbose=False)["input_ids"]):
                ids.extend(piece_ids)
                bar.update(len(piece))
            if max_tokens is not None and len(ids) >= max_tokens:
                break
    return ids[:max_tokens] if max_tokens is not None else ids


def tokenize_documents(tokenizer, docs: Iterable[str], *, eos_id: int | None = None,
                       max_tokens: int | None = None, chunk_chars: int | None = DEFAULT_CHUNK_CHARS,
                       progress: bool | None = None) -> list[int]:
    """One token stream: the documents' ids joined with ``eos_id`` (default the tokenizer's EOS)
    between consecutive documents; the first ``max_tokens`` ids when given."""
    eos = tokenizer.eos_token_id if eos_id is None else eos_id
    ids: list[int] = []
    for i, doc in enumerate(docs):
        if i > 0:
            if eos is None:
                raise DataError("the tokenizer has no EOS token to separate documents; pass eos_id")
            ids.append(int(eos))
        left = None if max_tokens is None else max_tokens - len(ids)
        if left is not None and left <= 0:
            break
        ids.extend(tokenize_text(tokenizer, doc, chunk_chars=chunk_chars, max_tokens=left, progress=progress))
    return ids[:max_tokens] if max_tokens is not None else ids


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------

def pack_blocks(ids: Sequence[int] | torch.Tensor, block_size: int, *, drop_remainder: bool = True,
                pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (n_blocks, block_size) int64.

    The remainder (fewer than ``block_size`` ids at the end) is dropped, or kept as a last block
    padded with ``pad_id`` whose padding has attention_mask 0.
    """
    if block_size < 2:
        raise ConfigError(f"block_size must be at least 2, got {block_size}")
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n_full = ids.numel() // block_size
    blocks = ids[:n_full * block_size].view(n_full, block_size)
    mask = torch.ones_like(blocks)
    rest = ids.numel() - n_full * block_size
    if rest and not drop_remainder:
        last = torch.full((1, block_size), pad_id, dtype=torch.long)
        last[0, :rest] = ids[n_full * block_size:]
        last_mask = torch.zeros_like(last)
        last_mask[0, :rest] = 1
        blocks, mask = torch.cat([blocks, last]), torch.cat([mask, last_mask])
    return blocks, mask


def sample_blocks(n_blocks: int, k: int, seed: int) -> list[int]:
    """``k`` distinct block indices chosen with ``seed``, in ascending order (reproducible)."""
    k = min(k, n_blocks)
    return sorted(random.Random(seed).sample(range(n_blocks), k))


class LMBlockDataset(Dataset):
    """Fixed-length token blocks; items are ``{"input_ids", "attention_mask", "labels"}`` tensors,
    so HF ``Trainer`` with its default collator batches them as they are."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (n_blocks, block_size), got {tuple(input_ids.shape)}")
        self.input_ids = input_ids.long()
        self.attention_mask = torch.ones_like(self.input_ids) if attention_mask is None else attention_mask.long()

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, mask = self.input_ids[i], self.attention_mask[i]
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    @property
    def block_size(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.attention_mask.sum())


@dataclass
class LMDataConfig(Config):
    """Which text, how it is cut, and how much of it (``max_tokens``) a run uses."""

    files: list[str] = field(default_factory=list)  # corpus names (LM_CORPORA) or file paths
    block_size: int = 1024
    drop_remainder: bool = True
    max_tokens: int | None = None                 # token budget; None = all
    sample: Literal["first", "random"] = "first"  # first N tokens, or a seeded sample of blocks
    seed: int = 0
    chunk_chars: int | None = DEFAULT_CHUNK_CHARS

    def validate(self) -> None:
        if not self.files:
            raise ConfigError(f"LMDataConfig.files is empty; give file paths or corpus names ({', '.join(LM_CORPORA)})")
        if self.block_size < 2:
            raise ConfigError(f"LMDataConfig.block_size must be at least 2, got {self.block_size}")
        if self.sample not in ("first", "random"):
            raise ConfigError(f"LMDataConfig.sample must be 'first' or 'random', got {self.sample!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"LMDataConfig.max_tokens must be positive or null, got {self.max_tokens}")
        if self.sample == "random" and self.max_tokens is not None and self.max_tokens < self.block_size:
            raise ConfigError(f"LMDataConfig.max_tokens ({self.max_tokens}) is below block_size ({self.block_size}); "
                              "a random sample of blocks needs at least one block")
        if self.chunk_chars is not None and self.chunk_chars < 1:
            raise ConfigError(f"LMDataConfig.chunk_chars must be positive or null, got {self.chunk_chars}")


def build_lm_dataset(config: LMDataConfig | Sequence[str], tokenizer, *, root: str | os.PathLike | None = None,
                     progress: bool | None = None, **overrides) -> LMBlockDataset:
    """Read ``config.files`` (each one document), tokenise, pack, apply the token budget.

    ``sample="first"``: the first ``max_tokens`` tokens of the stream (tokenising stops early).
    ``sample="random"``: ``max_tokens // block_size`` blocks drawn with ``seed`` from all blocks.
    """
    if not isinstance(config, LMDataConfig):
        config = LMDataConfig(files=list(config), **overrides)
    elif overrides:
        config = config.replace(**overrides)
    paths = [resolve_lm_file(f, root) for f in config.files]  # fail on a missing file before any work
    first = config.sample == "first"
    ids = tokenize_documents(tokenizer, (read_text(p) for p in paths),
                             max_tokens=config.max_tokens if first else None,
                             chunk_chars=config.chunk_chars, progress=progress)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    blocks, mask = pack_blocks(ids, config.block_size, drop_remainder=config.drop_remainder, pad_id=pad)
    if blocks.shape[0] == 0:
        raise DataError(f"{len(ids)} tokens make no block of {config.block_size}; "
                        "lower block_size or set drop_remainder: false")
    if not first and config.max_tokens is not None:
        keep = sample_blocks(blocks.shape[0], config.max_tokens // config.block_size, config.seed)
        blocks, mask = blocks[keep], mask[keep]
    return LMBlockDataset(blocks, mask)
