"""Importing TensorFlow without its C++ start-up banner, honouring TF_CPP_MIN_LOG_LEVEL.

TensorFlow 2.21 logs through absl before absl logging is initialised, and such lines go to
stderr whatever TF_CPP_MIN_LOG_LEVEL says (the oneDNN notice on every AVX-512 machine, twice).
The import runs with stderr (file descriptor 2) captured, then the captured text is replayed
without the C++ log lines below the level TF_CPP_MIN_LOG_LEVEL asks for.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Mapping
from types import ModuleType

# absl's prefix: severity letter, MMDD, time (its seconds run wild before absl is set up),
# thread id, file:line]
_CPP_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]\s]+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"


def min_log_level(environ: Mapping[str, str] | None = None) -> int:
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it: 0 (all) to 3; unset or junk is 0."""
    raw = (os.environ if environ is None else environ).get("TF_CPP_MIN_LOG_LEVEL", "0")
    return int(raw) if raw.strip().isdigit() else 0


def filter_cpp_log(text: str, level: int) -> str:
    """`text` without the C++ log lines below `level` (and absl's notice about them)."""
    if level <= 0:
        return text
    kept = []
    for line in text.splitlines(keepends=True):
        match = _CPP_LOG_LINE.match(line)
        if match and _SEVERITY[match.group(1)] < level:
            continue
        if line.startswith(_ABSL_NOTICE):
            continue
        kept.append(line)
    return "".join(kept)


def import_tensorflow() -> ModuleType:
    """`import tensorflow`, with the start-up lines TF_CPP_MIN_LOG_LEVEL asks to hide hidden."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    level = min_log_level()
    if level <= 0:
        import tensorflow

        return tensorflow
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = filter_cpp_log(captured.read().decode("utf-8", "replace"), level)
            if text:
                sys.stderr.write(text)
                sys.stderr.flush()
    return tensorflow
