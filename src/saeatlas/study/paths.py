"""Where a study may write: safe model labels, an output folder that cannot land on other data, and product
folders that cannot collide.

Every product of a study lives under its output folder (`out`), at a path built from a model label
(src/saeatlas/study/plan.py lists them).  So a label must be a plain folder name, `out` must not climb out of
the current folder or name a system folder, an existing `out` must hold nothing but a saeatlas study, and no
two stages may share a folder: otherwise a run writes outside `out`, or one model's product replaces
another's and the stale-product cleanup deletes data it does not own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import SaeAtlasError
from ..fileio import check_writable
from ..locks import is_lock_file

LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A model label: a plain folder name (no separators, no leading dot, at most 64 characters)."""
LABEL_RULE = "use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit, e.g. gemma"

STUDY_ENTRIES = frozenset(
    {"stores", "saes", "evals", "compare", "concepts", "cards", "absorption", "pretrained", "report.html"}
    | {"results.json", "study.toml", "run.log"}
)
"""What a study's output folder holds (with the stage records `<product>.stage.json` / `.started.json`, the
products' lock files `<product>.lock` and temporary files `.<name>.tmp-<pid>`): anything else means the folder
belongs to someone else."""
SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr")


class StudyPathError(SaeAtlasError):
    """The study would write outside its output folder, onto other data, or two products onto one folder."""


def label_ok(label: object) -> bool:
    return isinstance(label, str) and LABEL.fullmatch(label) is not None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _study_entry(name: str) -> bool:
    return (
        name in STUDY_ENTRIES
        or name.endswith((".stage.json", ".started.json"))
        or is_lock_file(name)
        or (name.startswith(".") and ".tmp-" in name)
    )


def check_out(out: str | Path, cwd: Path | None = None) -> Path:
    """`out` made absolute, if a study may write there: a relative `out` stays inside the current folder
    (`cwd`); an absolute one is not a system folder, the root or the home folder itself; an existing one is a
    folder holding only what a saeatlas study writes.  Raises StudyPathError (one line) otherwise."""
    given = str(out)
    cwd = (cwd or Path.cwd()).resolve()
    if not given.strip():
        raise StudyPathError('the study\'s out is empty: give an output folder, e.g. out = "runs/study"')
    path = Path(os.path.expanduser(given))
    resolved = (cwd / path).resolve() if not path.is_absolute() else path.resolve()
    if not path.is_absolute() and (resolved == cwd or not _inside(resolved, cwd)):
        raise StudyPathError(
            f"out = {given!r} is {'the current folder itself' if resolved == cwd else 'outside the current folder'}"
            f" ({resolved}): give a folder below it, e.g. runs/study, or an absolute path"
        )
    home = Path.home().resolve()
    if len(resolved.parts) <= 2 or resolved == home or any(_inside(resolved, Path(s)) for s in SYSTEM):
        raise StudyPathError(
            f"out = {given!r} is a system or top-level folder ({resolved}): give a folder of its own, e.g. "
            f"{home / 'runs' / 'study'}"
        )
    if resolved.exists() and not resolved.is_dir():
        raise StudyPathError(f"out = {given!r} is a file, not a folder: give a folder for the study's products")
    if resolved.is_dir():
        foreign = sorted(p.name for p in resolved.iterdir() if not _study_entry(p.name))
        if foreign:
            raise StudyPathError(
                f"out = {given!r} holds files that are not a saeatlas study ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): give an empty or new folder"
            )
    check_writable(resolved, "out")
    return resolved


def check_products(products: Iterable[tuple[str, Path]], out: Path) -> None:
    """Every (stage name, folder) of the products a study owns lies inside `out`, and no two share a folder or
    nest (case folded, as on case-insensitive file systems).  Raises StudyPathError naming both stages."""
    out = out.resolve()
    seen: dict[str, str] = {}
    for name, folder in products:
        folder = Path(folder).resolve()
        if not _inside(folder, out) or folder == out:
            raise StudyPathError(f"{name} would write {folder}, outside the study's folder {out}: rename it")
        seen_key = str(folder).casefold()
        for other_key, other in seen.items():
            if (
                seen_key == other_key
                or other_key.startswith(seen_key + os.sep)
                or seen_key.startswith(other_key + os.sep)
            ):
                raise StudyPathError(
                    f"'{other}' and '{name}' would both write {folder}: give the models labels that are not "
                    "another's label followed by -heldout, -seed<N> or -k<N>"
                )
        seen[seen_key] = name
