"""Import-and-first-use cost of the API models' candidate libraries, on the CLI's hot path.

Each subject is a fresh interpreter that imports a library, defines a
LaunchBody-like model with range constraints and decodes one JSON body
through it (what ``ketch launch``/``list`` pay before their first byte):

* ``pass``: the bare interpreter (the baseline);
* ``dataclasses``: a frozen dataclass, ``json.loads`` and a small hand validator;
* ``msgspec``: a ``msgspec.Struct`` with ``Meta`` constraints, ``msgspec.json.decode``;
* ``pydantic``: a ``BaseModel`` with ``Field`` constraints, ``model_validate_json``
  (pydantic is not a ketch dependency: give an interpreter that has it with
  ``--pydantic-python``, else that row is skipped);
* ``ketch.api``: ketch's own models and route table, imported.

Subjects alternate run by run; the median wall time of ``--runs`` runs is
printed, with the ratio to ``pass`` and the ``-X importtime`` cumulative
microseconds of the library's top-level import.

Usage: .venv/bin/python bench/api_models.py [--runs N] [--pydantic-python PATH]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

BODY = '{"name": "web", "cpus": 2, "memory": "2G", "timeout": 120.5}'

SUBJECTS = {
    "pass": ("", "pass"),
    "dataclasses": (
        "dataclasses",
        f"""
import dataclasses, json
@dataclasses.dataclass(frozen=True)
class LaunchBody:
    name: str | None = None
    cpus: int = 1
    memory: str = "1G"
    timeout: float | None = None
def check(doc):
    if not isinstance(doc, dict): raise ValueError("$: expected object")
    fields = {{f.name: f.type for f in dataclasses.fields(LaunchBody)}}
    for k, v in doc.items():
        if k not in fields: raise ValueError(f"$.{{k}}: unknown field")
    if not isinstance(doc.get("cpus", 1), int) or not 1 <= doc.get("cpus", 1) <= 64:
        raise ValueError("$.cpus: expected int 1..64")
    t = doc.get("timeout")
    if t is not None and (not isinstance(t, (int, float)) or not 0 < t <= 3600):
        raise ValueError("$.timeout: expected number in (0, 3600]")
    return LaunchBody(**doc)
check(json.loads({BODY!r}))
""",
    ),
    "msgspec": (
        "msgspec",
        f"""
from typing import Annotated
import msgspec
class LaunchBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str | None = None
    cpus: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    memory: str = "1G"
    timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] | None = None
msgspec.json.decode({BODY!r}, type=LaunchBody)
""",
    ),
    "pydantic": (
        "pydantic",
        f"""
from typing import Annotated
import pydantic
class LaunchBody(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    name: str | None = None
    cpus: Annotated[int, pydantic.Field(ge=1, le=64)] = 1
    memory: str = "1G"
    timeout: Annotated[float, pydantic.Field(gt=0, le=3600)] | None = None
LaunchBody.model_validate_json({BODY!r})
""",
    ),
    "ketch.api": ("ketch.api.routes", "import ketch.api.routes"),
}


def wall(python: str, code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([python, "-c", code], check=True)
    return time.perf_counter() - t0


def import_us(python: str, module: str) -> int | None:
    if not module:
        return None
    done = subprocess.run(
        [python, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$", line)
        if m and m.group(2) == module:
            return int(m.group(1))
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=21)
    p.add_argument("--pydantic-python", default="")
    args = p.parse_args()
    pythons = {name: sys.executable for name in SUBJECTS}
    if args.pydantic_python:
        pythons["pydantic"] = args.pydantic_python
    else:
        del pythons["pydantic"]
    times: dict[str, list[float]] = {name: [] for name in pythons}
    for run in range(args.runs):
        order = list(pythons) if run % 2 == 0 else list(reversed(pythons))
        for name in order:
            times[name].append(wall(pythons[name], SUBJECTS[name][1]))
    base = statistics.median(times["pass"])
    print(f"{'subject':<12} {'median ms':>10} {'x pass':>7} {'import ms':>10}")
    for name, ts in times.items():
        med = statistics.median(ts)
        us = import_us(pythons[name], SUBJECTS[name][0])
        imp = f"{us / 1000:.1f}" if us is not None else "--"
        print(f"{name:<12} {med * 1000:>10.1f} {med / base:>7.2f} {imp:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
