"""The ``kronbit`` command: subcommands mapped to plain functions.

A user mistake (``KronbitError``) prints one line ``kronbit: error: ...`` and exits 2; argparse
usage errors exit 2 too. Anything else is a kronbit bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .core.errors import KronbitError
from .core.paths import default_glue_dir


def _add_common_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with config keys (flags and --set override it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key (repeatable), e.g. --set learning_rate=3e-5")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--resume", action="store_true", help="continue a run from its last checkpoint")


def _config_dict(args: argparse.Namespace, flag_keys: Sequence[str]) -> dict[str, Any]:
    """YAML file, then explicit flags, then --set overrides (later wins)."""
    from .core.config import apply_overrides, load_yaml

    data: dict[str, Any] = load_yaml(args.config) if args.config else {}
    for key in flag_keys:
        value = getattr(args, key, None)
        if value is not None and value is not False:
            data[key] = value
    return apply_overrides(data, args.overrides)


def cmd_finetune(args: argparse.Namespace) -> int:
    from .workflows.finetune import FinetuneConfig, finetune

    data = _config_dict(args, ["model", "task", "data_dir", "output_dir", "epochs", "max_steps",
                               "seed", "bf16", "learning_rate", "batch_size", "max_seq_length",
                               "train_subset"])
    cfg = FinetuneConfig.from_dict(data, where="finetune config")
    result = finetune(cfg, overwrite=args.overwrite, resume=args.resume)
    from .core.distributed import is_main_process

    if is_main_process():
        print(json.dumps(result))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .workflows.evaluate import evaluate
    from .core.io import write_json

    result = evaluate(args.model, args.task, args.data_dir, args.split, args.batch_size,
                      args.max_seq_length, args.bf16, args.trust_remote_code)
    out = Path(args.output) if args.output else None
    if out is None:
        base = Path(args.model)
        if base.is_dir():
            out = base / f"eval-{result['task']}-{args.split}.json"
    if out is not None:
        write_json(out, result)
        result["written_to"] = str(out)
    print(json.dumps(result))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import load_recipe, run_recipe

    seed = [f"train.seed={args.seed}", f"teacher.seed={args.seed}"] if args.seed is not None else []
    recipe = load_recipe(args.recipe, [*seed, *args.overrides])
    table = run_recipe(recipe, model=args.model, task=args.task, data_dir=args.data_dir,
                       output_dir=args.output_dir, max_steps=args.max_steps, overwrite=args.overwrite,
                       resume=args.resume, recipe_source=str(args.recipe), student=args.student)
    from .core.distributed import is_main_process

    if is_main_process():
        print(json.dumps(table))
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from .data.lm import read_text
    from .models.decoders import load_causal_lm, load_causal_tokenizer
    from .workflows.perplexity import perplexity

    text = read_text(args.text)
    model = load_causal_lm(args.model, trust_remote_code=args.trust_remote_code)
    tokenizer = load_causal_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    result = perplexity(model, tokenizer, text, max_length=args.max_length, stride=args.stride,
                        batch_size=args.batch_size, bf16=args.bf16, max_tokens=args.max_tokens)
    print(json.dumps({"model": args.model, "text": str(args.text), **result}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .workflows.export import export_model

    result = export_model(args.model, args.output_dir, dtype=args.dtype, overwrite=args.overwrite,
                          onnx=args.onnx, onnx_seq_len=args.onnx_seq_len)
    print(json.dumps(result))
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from .formats.model_card import write_model_card

    print(json.dumps({"model_card": str(write_model_card(args.path))}))
    return 0


def cmd_size(args: argparse.Namespace) -> int:
    from .formats.size import size_report

    print(json.dumps(size_report(args.path, in_memory=not args.no_memory)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .runner.demo import DemoConfig, demo, render

    data = _config_dict(args, ["task", "recipe", "data_dir", "output_dir", "train_subset", "max_seq_length"])
    summary = demo(DemoConfig.from_dict(data, where="demo"))
    print(render(summary))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .workflows.bench import bench_model, markdown

    result = bench_model(args.model_dir, shapes=args.shapes, rounds=args.rounds, threads=args.threads,
                         write=not args.no_write)
    print(json.dumps(result))
    print(markdown(result), end="")
    return 0


DATA_HELP = ("GLUE TSV root (CoLA/, SST-2/, ...) or 'hub'; default: $KRONBIT_DATA_ROOT/glue, else the "
             "local data folder when it exists, else the hub")


def _finetune_parser(sub, data_default: str) -> None:
    p = sub.add_parser("finetune", help="fine-tune a full-precision model (the teacher) on a GLUE task")
    p.add_argument("--model", help="hub id, local HF directory, or packaged:minilm")
    p.add_argument("--task", help="cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli")
    p.add_argument("--data-dir", default=data_default, help=DATA_HELP)
    p.add_argument("--output-dir", help="run directory to create")
    p.add_argument("--epochs", type=float, help="training epochs (default 3)")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps (overrides --epochs)")
    p.add_argument("--seed", type=int, help="random seed for initialisation, data order and subsets (default 42)")
    p.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast (faster on CPUs with bf16 units)")
    p.add_argument("--learning-rate", type=float, help="peak learning rate (default 5e-5)")
    p.add_argument("--batch-size", type=int, help="training batch size (default 32)")
    p.add_argument("--max-seq-length", type=int, help="truncate inputs to N tokens (default 128)")
    p.add_argument("--train-subset", type=int, help="use a seeded random subset of N training examples")
    _add_common_train_flags(p)
    p.set_defaults(func=cmd_finetune)


def _run_parser(sub, data_default: str) -> None:
    p = sub.add_parser("run", help="run a staged compression recipe (YAML), e.g. recipes/tspq/binary.yaml")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--model", required=True,
                   help="a fine-tuned teacher for the task (run or model directory), or a base model "
                        "(then the recipe's teacher section fine-tunes it first)")
    p.add_argument("--task", help="GLUE task (tspq / glue recipes); kngpt2 language-model recipes take none")
    p.add_argument("--student", help="the model stages with init_from: student start from, e.g. the run "
                                     "directory of a kngpt2 pre-training (recipes/kngpt2/glue.yaml)")
    p.add_argument("--data-dir", default=data_default,
                   help="GLUE TSV root (glue/tspq recipes) or the data root holding lm/ (kngpt2); " + DATA_HELP)
    p.add_argument("--output-dir", required=True, help="run directory to create (or continue with --resume)")
    p.add_argument("--max-steps", type=int, help="cap every stage at N steps (smoke runs)")
    p.add_argument("--seed", type=int, help="random seed of every stage and of the teacher fine-tune "
                                            "(sets train.seed and teacher.seed; default 42)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.epochs=2 --set stages.0.w_bits=4")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--resume", action="store_true", help="skip finished stages of an existing run")
    p.set_defaults(func=cmd_run)


def _perplexity_parser(sub) -> None:
    p = sub.add_parser("perplexity", help="sliding-window perplexity of a causal LM on a text file")
    p.add_argument("--model", required=True, help="hub id, local directory, .gguf file, or packaged:smollm2")
    p.add_argument("--text", required=True,
                   help="a text file, or wikitext2-test / wikitext2-valid / tinyshakespeare (from the data root)")
    p.add_argument("--max-length", type=int, help="window length (default: model context, at most 1024)")
    p.add_argument("--stride", type=int, help="new tokens per window (default: half the window)")
    p.add_argument("--max-tokens", type=int, help="score only the first N tokens")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (default 1)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on CPUs with bf16 units)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the checkpoint to run (off by default)")
    p.set_defaults(func=cmd_perplexity)


def _eval_parser(sub, data_default: str) -> None:
    p = sub.add_parser("eval", help="evaluate a model or run directory on a GLUE split")
    p.add_argument("--model", required=True, help="run directory, model directory, or hub id")
    p.add_argument("--task", help="task name (default: the task recorded in the model directory)")
    p.add_argument("--data-dir", default=data_default, help=DATA_HELP)
    p.add_argument("--split", default="dev", help="dev (default) or train; GLUE test labels are hidden")
    same = " (default: as the model's dev metrics were computed, recorded in its kronbit.json; else {})"
    p.add_argument("--batch-size", type=int, help="examples per forward pass" + same.format(128))
    p.add_argument("--max-seq-length", type=int, help="truncate inputs to N tokens" + same.format(128))
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                   help="bf16 autocast, faster on CPUs with bf16 units" + same.format("off"))
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the checkpoint to run (off by default)")
    p.add_argument("--output", help="metrics JSON path (default: MODEL/eval-TASK-SPLIT.json)")
    p.set_defaults(func=cmd_eval)


def _export_parsers(sub) -> None:
    p = sub.add_parser("export", help="write a compressed model as a packed checkpoint (real on-disk size)")
    p.add_argument("--model", required=True, help="run directory or compressed model directory")
    p.add_argument("--output-dir", required=True, help="packed directory to create")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of scales and full-precision parts (float32: reload is exact)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx and check it in onnxruntime")
    p.add_argument("--onnx-seq-len", type=int, default=128, help="example sequence length for the ONNX trace")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("size", help="on-disk and in-memory size of a model directory (JSON line)")
    p.add_argument("path", help="packed, compressed, run or Hugging Face model directory")
    p.add_argument("--no-memory", action="store_true", help="skip loading the model to measure memory")
    p.set_defaults(func=cmd_size)


def _demo_parser(sub, data_default: str) -> None:
    p = sub.add_parser("demo", help="the main job at a small budget: teacher → TSPQ → packed export → size, "
                                    "score and latency against fp32 and int8 (about 10 min on 2 cores)")
    p.add_argument("--task", help="GLUE task (default sst2)")
    p.add_argument("--recipe", help="TSPQ recipe (default recipes/tspq/ternary.yaml; recipes/tspq/binary.yaml for W1A1)")
    p.add_argument("--data-dir", default=data_default, help=DATA_HELP)
    p.add_argument("--output-dir", help="where everything goes (default runs/demo); what exists there is reused")
    p.add_argument("--train-subset", type=int, help="training examples for the teacher and each stage (default 4000)")
    p.add_argument("--max-seq-length", type=int, help="truncate inputs to N tokens (default 64)")
    p.set_defaults(func=cmd_demo, config=None, overrides=[])


def _card_parser(sub) -> None:
    p = sub.add_parser("card", help="(re)write the model card README.md of an exported folder "
                                    "(e.g. after kronbit bench wrote bench.json)")
    p.add_argument("path", help="packed or compressed model directory")
    p.set_defaults(func=cmd_card)


def _bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency of a packed model against fp32, bf16 autocast and int8 dynamic "
                                     "(JSON line + table; writes bench.json into the folder)")
    p.add_argument("model_dir", help="packed model directory (kronbit export)")
    p.add_argument("--shapes", nargs="+", default=["1x128", "32x128"], metavar="BATCHxSEQ",
                   help="batch x sequence shapes to time (default: 1x128 32x128)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per shape (median)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--no-write", action="store_true", help="do not write bench.json")
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kronbit", description="Compress transformer language models: "
                                     "two-stage progressive quantization and Kronecker decomposition.")
    parser.add_argument("--version", action="version", version=f"kronbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    data_default = default_glue_dir()
    _finetune_parser(sub, data_default)
    _run_parser(sub, data_default)
    _perplexity_parser(sub)
    _eval_parser(sub, data_default)
    _export_parsers(sub)
    _demo_parser(sub, data_default)
    _card_parser(sub)
    _bench_parser(sub)
    return parser


def quiet_libraries() -> None:
    """Silence the benign reports of the libraries kronbit drives, before they are imported:
    transformers' per-load weight bars and its 'newly initialized' report (a new classification
    head is expected here), hub download bars. kronbit's own bars and every warning still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    from .core.distributed import init, shutdown

    clean = False
    try:
        init()  # join a torchrun / accelerate launch's process group (no-op otherwise)
        code = args.func(args)
        clean = True
        return code
    except KronbitError as e:
        print(f"kronbit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kronbit: interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown(clean)


if __name__ == "__main__":
    sys.exit(main())
