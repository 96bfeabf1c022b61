"""Small helpers shared by the scripts in ``benchmarks/``.

- :func:`machine_info`: what the figures were measured on (platform, CPUs, Python, package versions);
- :func:`wait_for_quiet`: wait until the 1-minute load average drops, since this machine is shared;
- :func:`markdown_table`: rows to a GitHub table;
- :func:`write_block`: replace one benchmark's block in ``RESULTS.md``, leaving the others alone.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n"


def load1() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


#: the CPU features that decide which precision and which kernels are fast (issue 17)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_model_and_flags() -> tuple[str, dict[str, bool]]:
    """The CPU's model name and which of ``CPU_FLAGS`` it has (Linux ``/proc/cpuinfo``)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model in ("unknown", "", platform.processor()):
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, {flag: flag in flags for flag in CPU_FLAGS}


def native_bf16(info: dict[str, str]) -> bool:
    """Whether the CPU a ``machine_info`` describes multiplies bf16 natively (else torch emulates it)."""
    present = {flag for flag in info.get("cpu flags", "").split(" ") if flag and flag != "(no)"}
    absent = {flag for flag in CPU_FLAGS if f"{flag} (no)" in info.get("cpu flags", "")}
    return bool({"avx512_bf16", "amx_bf16"} & (present - absent))


def machine_info(packages: Iterable[str] = ()) -> dict[str, str]:
    """Platform, CPU model and its flags that matter, the GPU if any, Python, the versions of
    ``packages``, the date and the load average: every block says what it was measured on."""
    model, flags = cpu_model_and_flags()
    info = {
        "platform": platform.platform(),
        "cpu": model,
        "cpu flags": " ".join(f"{flag}{'' if has else ' (no)'}" for flag, has in flags.items()),
        "cpus": str(os.cpu_count()),
        "python": sys.version.split()[0],
    }
    torch = sys.modules.get("torch")  # only where the benchmark already uses torch
    if torch is not None:
        try:
            info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        except Exception:  # a broken driver is "none" for a report
            info["gpu"] = "none"
    for name in packages:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    info["date"] = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    try:
        info["load average"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        info["load average"] = "n/a"
    return info


def wait_for_quiet(max_load: float, *, poll_s: float = 60.0, max_wait_s: float = 1500.0,
                   log=print) -> float:
    """Sleep while the 1-minute load exceeds ``max_load`` (up to ``max_wait_s``); return the last load."""
    deadline = time.monotonic() + max_wait_s
    load = load1()
    while load > max_load and time.monotonic() < deadline:
        log(f"load {load:.2f} > {max_load:g}: waiting {poll_s:g} s "
            f"({max(0.0, deadline - time.monotonic()):.0f} s left)")
        time.sleep(min(poll_s, max(1.0, deadline - time.monotonic())))
        load = load1()
    return load


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
                   align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one character per column, ``l`` or ``r`` (default: l, then r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def info_lines(info: dict[str, str]) -> str:
    """``machine_info`` as a markdown bullet list."""
    return "\n".join(f"- {k}: {v}" for k, v in info.items())


def write_block(name: str, body: str, path: Path = RESULTS) -> Path:
    """Put ``body`` between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in ``path``.

    Only that block is replaced (appended if absent); the file is created with a one-line header.
    Written to a temporary file and renamed, so a reader never sees half a file.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    i, j = text.find(start), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
