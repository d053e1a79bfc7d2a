"""LM text -> token stream -> packed blocks: EOS placement, sizes, budgets, determinism."""

from __future__ import annotations

import pytest
import torch

from kronbit.data.lm import (LMBlockDataset, LMDataConfig, build_lm_dataset, pack_blocks, read_text,
                             resolve_lm_file, split_text, tokenize_documents, tokenize_text)
from kronbit.core.errors import ConfigError, DataError

WIKI_LIKE = (" \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : <unk> Chronicles is a "
             "tactical role @-@ playing video game .\n\n\n  Two  spaces\tand tabs\n \n = = Plot = = \n")


def test_chunked_tokenisation_equals_whole_text(gpt2_tok):
    text = WIKI_LIKE * 40
    pieces = split_text(text, 50)
    assert len(pieces) > 20 and "".join(pieces) == text
    whole = gpt2_tok(text, add_special_tokens=False)["input_ids"]
    assert tokenize_text(gpt2_tok, text, chunk_chars=50) == whole
    assert tokenize_text(gpt2_tok, text, chunk_chars=50, max_tokens=77) == whole[:77]


def test_documents_are_joined_with_eos_between(gpt2_tok):
    a, b = gpt2_tok("one two")["input_ids"], gpt2_tok("three")["input_ids"]
    assert tokenize_documents(gpt2_tok, ["one two", "three"]) == a + [50256] + b
    assert tokenize_documents(gpt2_tok, ["one two", "three"], eos_id=7) == a + [7] + b
    assert tokenize_documents(gpt2_tok, ["one two"]) == a  # one document: no EOS at all
    assert tokenize_documents(gpt2_tok, ["one two", "three"], max_tokens=len(a) + 1) == a + [50256]


def test_pack_blocks_drop_or_pad_the_remainder():
    ids = list(range(10))
    blocks, mask = pack_blocks(ids, 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and mask.all()
    blocks, mask = pack_blocks(ids, 4, drop_remainder=False, pad_id=99)
    assert blocks.tolist()[-1] == [8, 9, 99, 99] and mask.tolist()[-1] == [1, 1, 0, 0]
    ds = LMBlockDataset(blocks, mask)
    assert ds[2]["labels"].tolist() == [8, 9, -100, -100] and ds[0]["labels"].tolist() == [0, 1, 2, 3]
    assert ds.num_tokens == 10 and ds.block_size == 4 and len(ds) == 3
    with pytest.raises(ConfigError, match="block_size"):
        pack_blocks(ids, 1)


def _write_docs(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"doc{i}.txt"
        p.write_text(f"Document {i} says: " + " ".join(f"word{i}{j}" for j in range(60)) + "\n", encoding="utf-8")
        paths.append(str(p))
    return paths


def test_build_dataset_sizes_eos_and_trainer_collation(tmp_path, gpt2_tok):
    from transformers import default_data_collator

    paths = _write_docs(tmp_path)
    stream = tokenize_documents(gpt2_tok, [read_text(p) for p in paths])
    assert stream.count(50256) == 2
    ds = build_lm_dataset(paths, gpt2_tok, block_size=16)
    assert len(ds) == len(stream) // 16
    assert ds.input_ids.flatten().tolist() == stream[:len(ds) * 16]
    batch = default_data_collator([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 16) and torch.equal(batch["labels"], batch["input_ids"])
    kept = build_lm_dataset(paths, gpt2_tok, block_size=16, drop_remainder=False)
    assert kept.num_tokens == len(stream) and len(kept) == -(-len(stream) // 16)


def test_token_budget_first_and_seeded_sample(tmp_path, gpt2_tok):
    paths = _write_docs(tmp_path)
    full = build_lm_dataset(paths, gpt2_tok, block_size=8)
    first = build_lm_dataset(paths, gpt2_tok, block_size=8, max_tokens=40)
    assert torch.equal(first.input_ids, full.input_ids[:5])
    cfg = LMDataConfig(files=paths, block_size=8, max_tokens=40, sample="random", seed=1)
    s1, s2 = build_lm_dataset(cfg, gpt2_tok), build_lm_dataset(cfg, gpt2_tok)
    other = build_lm_dataset(cfg, gpt2_tok, seed=2)
    assert len(s1) == 5 and torch.equal(s1.input_ids, s2.input_ids)
    assert not torch.equal(s1.input_ids, other.input_ids)
    full_rows = {tuple(r) for r in full.input_ids.tolist()}
    assert all(tuple(r) in full_rows for r in s1.input_ids.tolist())  # sampled whole blocks


def test_config_and_file_errors(tmp_path, gpt2_tok):
    with pytest.raises(ConfigError, match="files is empty"):
        LMDataConfig()
    with pytest.raises(ConfigError, match="sample: 'last' is not one of 'first', 'random'"):
        LMDataConfig.from_dict({"files": ["x"], "sample": "last"})
    with pytest.raises(ConfigError, match="below block_size"):
        LMDataConfig(files=["x"], block_size=64, max_tokens=10, sample="random")
    with pytest.raises(DataError, match="text file not found: .*corpus name"):
        build_lm_dataset([str(tmp_path / "missing.txt")], gpt2_tok)
    with pytest.raises(DataError, match="KRONBIT_DATA_ROOT"):
        resolve_lm_file("wikitext2-test", root=tmp_path)
    (tmp_path / "short.txt").write_text("hi", encoding="utf-8")
    with pytest.raises(DataError, match="no block"):
        build_lm_dataset([str(tmp_path / "short.txt")], gpt2_tok, block_size=16)


def test_wikitext_is_read_raw(gpt2_tok, wikitext_test):
    path = wikitext_test
    text = read_text(path)
    assert " @-@ " in text[:20000] and text.startswith(" \n = Robert <unk> = \n")
    ds = build_lm_dataset([str(path)], gpt2_tok, block_size=128, max_tokens=1000)
    assert len(ds) == 7 and gpt2_tok.decode(ds.input_ids[0]).startswith(" \n = Robert <unk> =")


def test_trainer_consumes_the_blocks(tmp_path, gpt2_tok):
    from transformers import Trainer, TrainingArguments

    from helpers import tiny_gpt2

    ds = build_lm_dataset(_write_docs(tmp_path), gpt2_tok, block_size=32, drop_remainder=False)
    model = tiny_gpt2(vocab_size=len(gpt2_tok)).train()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    result = Trainer(model=model, args=args, train_dataset=ds).train()
    assert result.global_step == 2 and 0 < result.training_loss < 20  # ~ln(50257) = 10.8 at init
