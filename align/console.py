"""What a run prints: library messages that say nothing actionable are filtered, and progress
bars are left out where no terminal shows them (`align --verbose` keeps everything)."""

from __future__ import annotations

import logging
import os
import sys
import warnings


def filter_known_warnings() -> None:
    """Drop library messages that are expected and say nothing actionable (`align --verbose`,
    or ALIGN_VERBOSE=1, keeps them): the "score.* MISSING" load report of a reward or value
    model's new head, and the deprecation warning transformers raises on every Trainer build."""
    if os.environ.get("ALIGN_VERBOSE"):
        return
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated",
                            category=FutureWarning)
    target = logging.getLogger("transformers.modeling_utils")
    if not any(isinstance(f, ExpectedNewHead) for f in target.filters):
        target.addFilter(ExpectedNewHead())


def _report_rows(message: str) -> list[tuple[str, str]]:
    rows = []
    for line in message.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 2 and cells[0] and cells[0] != "Key" and not set(cells[0]) <= {"-", "+"}:
            rows.append((cells[0], cells[1]))
    return rows


def _is_new_head_report(message: str) -> bool:
    if "LOAD REPORT" not in message:
        return False
    rows = _report_rows(message)
    return bool(rows) and all(key.startswith("score.") and status == "MISSING"
                              for key, status in rows)


class ExpectedNewHead:
    """A logging filter: only the new score head is missing from the checkpoint."""

    def filter(self, record) -> bool:
        return not _is_new_head_report(record.getMessage())


def quiet_progress_without_terminal() -> None:
    """Without a terminal (a CI log, a file), no carriage-return bars from model loading and
    saving (transformers, huggingface_hub) or dataset maps (datasets)."""
    if sys.stdout.isatty():
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
