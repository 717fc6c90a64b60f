"""The `vitreduce` command: one verb per task, each verb in its own module under `vitreduce.cli`.

Every command module defines `add_arguments(parser)` and `run(args) -> int`; its docstring is its help.
A command that computes has `--threads` (cli.args.add_threads_option); torch's threads are set here before
it runs, except where the command divides them between runs itself (`_threads_per_run`: study, demo).
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
import warnings
from pathlib import Path

from vitreduce.errors import VitreduceError

# verb -> its module in vitreduce.cli (tests/test_layout.py checks that the table and the modules agree).
VERBS = {
    "inspect": "inspect_cmd",
    "reduce": "reduce_cmd",
    "compress": "compress_cmd",
    "train": "train_cmd",
    "eval": "eval_cmd",
    "data": "data_cmd",
    "study": "study_cmd",
    "report": "report_cmd",
    "demo": "demo_cmd",
    "profile": "profile_cmd",
    "sharpness": "sharpness_cmd",
    "landscape": "landscape_cmd",
    "probe": "probe_cmd",
}


def _summary(verb: str) -> str:
    """The first line of a verb's help, read from its module's source without importing it (nor torch)."""
    spec = importlib.util.find_spec(f"vitreduce.cli.{VERBS[verb]}")
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) if spec and spec.origin else None
    return doc.strip().splitlines()[0] if doc else verb


def build_parser(verbs: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser, with the arguments of ``verbs`` (default: every verb); the other verbs are
    listed with their summary only, their modules not imported (`vitreduce --version` and `--help` start
    in a fraction of a second, without torch)."""
    from vitreduce.version import __version__

    parser = argparse.ArgumentParser(
        prog="vitreduce", description="MLP parameter reduction for timm Vision Transformers."
    )
    parser.add_argument("--version", action="version", version=f"vitreduce {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for verb, module_name in VERBS.items():
        if verbs is not None and verb not in verbs:
            subparsers.add_parser(verb, help=_summary(verb))
            continue
        module = importlib.import_module(f"vitreduce.cli.{module_name}")
        doc = (module.__doc__ or "").strip()
        sub = subparsers.add_parser(
            verb, help=_summary(verb), description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run, _unknown_hint=getattr(module, "unknown_hint", None))
    return parser


_FORMAT_WARNING = warnings.formatwarning


def _as_a_line(message, category, filename, lineno, line=None) -> str:
    """vitreduce's own warnings (skipped files, ...) as one line for the user, not Python's source-line form."""
    if "vitreduce" in Path(filename).parts:
        return f"warning: {message}\n"
    return _FORMAT_WARNING(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    """The command line; ``argv`` None: this process's own arguments (the process's entry point)."""
    verb = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    if argv is None and verb == "train":
        from vitreduce.train import preempt  # imports no torch

        preempt.catch_early()  # a stop signal during the imports below ends the run at its first safe point
    if argv is None:
        warnings.formatwarning = _as_a_line
    parser = build_parser([verb] if verb in VERBS else [])
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse's own error, with the verb's hint (train: the --set form of a config key)
        hint = getattr(args, "_unknown_hint", None)
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint(unknown) if hint else ''}")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        if hasattr(args, "threads") and not getattr(args, "_threads_per_run", False):
            from vitreduce.device import set_threads

            set_threads(args.threads, warn=(lambda _line: None) if getattr(args, "quiet", False) else None)
        return int(args._run(args) or 0)
    except VitreduceError as err:
        # Errors meant for the user: one clear message, no traceback.
        print(f"vitreduce {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitreduce {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
