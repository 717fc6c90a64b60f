"""The `vitreduce` command line: the dispatcher (main), shared argument helpers, one module per verb."""
from vitreduce.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
