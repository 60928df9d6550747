"""Where diagnostics go: stdout is for a command's result, everything else goes to stderr.

`configure_logging(level)` is called once, by the CLI's root callback, before any library
is imported (never at import time). It sends Python logging, transformers', Hugging Face
hub's and vLLM's logs to stderr at one level (WARNING by default), each line once, and drops
transformers' known-harmless load report about the multi-token-prediction (MTP) layer.
vLLM configures its own logger (to stdout by default) in every process it starts, from
environment variables, so those are set here for the engine's worker processes too.
`stdout_reserved_for_results()` guards the result channel at the file-descriptor level
against code that writes to fd 1 directly (vLLM's worker processes, C extensions).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_handler: logging.Handler | None = None   # ours on the root logger, replaced on reconfiguration


def parse_level(name: str) -> int:
    """`--log-level` value -> logging level; ValueError names the accepted values."""
    level = logging.getLevelName(name.upper())
    if name.lower() not in LEVELS or not isinstance(level, int):
        raise ValueError(f"unknown log level {name!r} (use {', '.join(LEVELS)})")
    return level


class MtpLoadReportFilter(logging.Filter):
    """Drops transformers' load report when every key it lists is UNEXPECTED and belongs to the
    one extra layer past the decoder stack that holds the MTP module (DeepSeek-V3 sec 2.2;
    transformers' DeepseekV3 has no MTP and ignores it). Any other report still shows."""

    _ROW = re.compile(r"^(\S+)\s*\|\s*(\w+)\s*\|", re.MULTILINE)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [(key, status) for key, status in self._ROW.findall(message) if key != "Key"]
        layers = {m.group(1) for key, _ in rows if (m := re.match(r"model\.layers\.(\d+)\.", key))}
        only_mtp = (bool(rows) and all(status == "UNEXPECTED" for _, status in rows)
                    and len(layers) == 1 and all(key.startswith("model.layers.") for key, _ in rows)
                    and any(key.endswith(".eh_proj.weight") for key, _ in rows))
        return not only_mtp


def _prints(handler: logging.Handler) -> bool:
    """A handler that writes records to the terminal (not a file, not a null handler)."""
    return (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            and handler.level <= logging.CRITICAL
            and getattr(handler, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__,
                                                     sys.__stdout__))


class _NotPrintedYet(logging.Filter):
    """For the root handler: drop a record that a library's own handler on the way up has
    already printed (huggingface_hub keeps its handler and propagates; transformers does the
    same when CI is set), so each line appears once whatever the import order."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if any(_prints(h) for h in logger.handlers):
                return False
            if not logger.propagate:
                break
            logger = logger.parent
        return True


def configure_logging(level: int) -> None:
    """Send every library's logs to stderr at `level`, once each. Call before importing vLLM
    or transformers: they read their settings from the environment when first imported."""
    name = logging.getLevelName(level)
    # vLLM configures its logger in this process and in each worker it spawns, from these.
    os.environ["VLLM_LOGGING_LEVEL"] = name
    os.environ["VLLM_LOGGING_STREAM"] = "ext://sys.stderr"
    os.environ["TRANSFORMERS_VERBOSITY"] = name.lower()
    os.environ["HF_HUB_VERBOSITY"] = name.lower()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")   # its fork warning is noise here
    global _handler
    root = logging.getLogger()
    if _handler is not None:   # configured before (several commands in one process, as in tests)
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter(FORMAT))
    _handler.addFilter(_NotPrintedYet())
    root.addHandler(_handler)
    root.setLevel(level)
    for library in ("transformers", "huggingface_hub", "vllm", "ray", "torch"):
        if library in sys.modules:   # already configured itself: the environment is read
            logging.getLogger(library).setLevel(level)
    if "transformers" in sys.modules:   # its handler may hold an old stderr; use ours instead
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_default_handler()
        transformers_logging.enable_propagation()
    modeling = logging.getLogger("transformers.modeling_utils")
    if not any(isinstance(f, MtpLoadReportFilter) for f in modeling.filters):
        modeling.addFilter(MtpLoadReportFilter())


@contextmanager
def stdout_reserved_for_results() -> Iterator[None]:
    """While inside, file descriptor 1 points at stderr, so whatever a library, a C extension or
    a child process (vLLM's workers inherit it) writes there lands on stderr; `sys.stdout`, on a
    copy of the real stdout, carries only what the command prints as its result. Under a test
    runner whose stdout is not fd 1 (typer's CliRunner) nothing is changed."""
    try:
        real = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):   # an in-memory stdout
        real = False
    if not real:
        yield
        return
    original = sys.stdout
    original.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = open(saved, "w", encoding=original.encoding, errors=original.errors,  # noqa: SIM115
                      closefd=False, buffering=1 if original.line_buffering else -1)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout.close()
        sys.stdout = original
        os.dup2(saved, 1)
        os.close(saved)
