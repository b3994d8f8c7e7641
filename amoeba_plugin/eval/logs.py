"""Quieting lm-eval's log lines (the evaluator, the subnet scorers and the lm-eval model share it)."""
from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def quiet_lm_eval(enabled: bool = True, logger_name: str = "lm_eval"):
    """Silence lm-eval's INFO/WARNING log lines (of ``logger_name``) for the duration (progress bars stay)."""
    if not enabled:
        yield
        return
    logger = logging.getLogger(logger_name)
    saved = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(saved)


__all__ = ["quiet_lm_eval"]
