"""The fault sweep's cases: bad inputs for every verb and every file saeatlas reads, made from valid ones.

Not a test module: tests/test_faults.py runs the fast share in-process, bench/faults.py runs them all as a user
would (a fresh `python -m saeatlas` each) and prints the table kept in the README.

A workspace holds one valid thing of each kind (a tiny model folder, a corpus, a store, SAEs in the SAELens,
sparsify and dictionary_learning layouts, a study with its stage records, study results and a concepts file).
Each case copies the one thing it breaks into its own folder, breaks it, and runs one verb on it:
- files: every field the file's schema (`saeatlas.schema.SCHEMAS`) knows, given a wrong type, a value out of
  range, an unlisted choice or removed (`saeatlas.schema.mutations`), plus the bytes cut short or made non-UTF-8;
- flags: every numeric flag of every verb given a value that can only be a mistake;
- the study file: every key given a wrong type or removed, and the shapes people get wrong.
A case passes when the verb exits 2 with one line on stderr (no traceback, no log line, no warning) and
leaves nothing behind: its folder holds what it held before.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tomllib
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from helpers import HOOK, TEXTS, build_tiny_model, tiny_store

SAE_ARGS = ["--arch", "topk", "--d-sae", "32", "--k", "4", "--steps", "5", "--batch-size", "32", "--quiet"]


@dataclass
class Case:
    """One bad input: `prepare(folder)` writes the broken thing into the case's own folder and returns the
    arguments of the verb to run there (paths absolute)."""

    kind: str
    """What is broken: a file kind ('store manifest', ...), 'flags' or 'study file'."""
    verb: str
    name: str
    prepare: Callable[[Path], list[str]]
    expect: str = "refused"
    """'refused': exit 2 with one line; 'stale': a damaged stage record is no error, the stage reads as stale
    (and is made again) -- exit 0, the stage shown stale."""


@dataclass
class Outcome:
    case: Case
    code: int
    stderr: list[str]
    left: list[str] = field(default_factory=list)
    stdout: str = ""

    @property
    def verdict(self) -> str:
        """'ok' (exit 2, one line, nothing left), or what went wrong."""
        if any("Traceback" in line for line in self.stderr):
            return "traceback"
        if self.case.expect == "stale":
            return "ok" if self.code == 0 and "stale" in self.stdout else f"exit {self.code}, not shown stale"
        if self.code == 0:
            return "accepted"
        if self.code != 2:
            return f"exit {self.code}"
        if len(self.stderr) != 1 or not self.stderr[0].startswith("saeatlas"):
            return "not one line"
        if self.left:
            return "left files"
        return "ok"


def listing(folder: Path) -> dict[str, int]:
    """Every file and folder under `folder` with its size (folders: -1)."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*")}


# ---------------------------------------------------------------- the workspace
def build_workspace(root: Path) -> dict[str, Path]:
    """One valid thing of each kind, under `root` (about 20 s on 2 cores)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from saeatlas.cli import main

    root.mkdir(parents=True, exist_ok=True)
    ws = {"root": root, "model": build_tiny_model(root / "model", "llama")}
    corpus = root / "corpus"
    corpus.mkdir()
    for i, text in enumerate(TEXTS * 4):
        (corpus / f"doc{i}.txt").write_text(f"{text} ({i})\n" * 3)
    ws["corpus"] = corpus
    ws["store"] = tiny_store(ws["model"], corpus, root / "store", context=32)
    ws["sae"] = root / "sae"
    assert main(["train", "--store", str(ws["store"]), "--hook", HOOK, *SAE_ARGS, "--out", str(ws["sae"])]) == 0
    tensors = {k: v.contiguous() for k, v in _safetensors(ws["sae"] / "sae_weights.safetensors").items()}
    d_sae = tensors["W_enc"].shape[1]
    ws["sparsify"] = root / "sparsify"
    ws["sparsify"].mkdir()
    save_file(
        {
            "encoder.weight": tensors["W_enc"].T.contiguous(),
            "encoder.bias": tensors["b_enc"],
            "W_dec": tensors["W_dec"],
            "b_dec": tensors["b_dec"],
        },
        ws["sparsify"] / "sae.safetensors",
    )
    (ws["sparsify"] / "cfg.json").write_text(json.dumps({"k": 4, "num_latents": d_sae, "d_in": 16}))
    ws["dictionary_learning"] = root / "dictionary_learning"
    ws["dictionary_learning"].mkdir()
    torch.save(
        {
            "encoder.weight": tensors["W_enc"].T.contiguous(),
            "encoder.bias": tensors["b_enc"],
            "decoder.weight": tensors["W_dec"].T.contiguous(),
            "bias": tensors["b_dec"],
        },
        ws["dictionary_learning"] / "ae.pt",
    )
    (ws["dictionary_learning"] / "config.json").write_text(
        json.dumps({"trainer": {"activation_dim": 16, "dict_size": d_sae, "k": 4, "layer": 1}})
    )
    np.save(root / "acts.npy", np.random.default_rng(0).standard_normal((256, 16)).astype("float32"))
    ws["acts"] = root / "acts.npy"
    ws["concepts"] = root / "concepts.json"
    ws["concepts"].write_text(json.dumps({"animals": ["fox", "dog"], "weather": ["winds", "fire"]}))
    ws["study"] = root / "study.toml"
    ws["study"].write_text(study_text(ws))
    ws["study_out"] = root / "study-out"
    _write_records(ws)
    ws["results"] = root / "results"
    ws["results"].mkdir()
    (ws["results"] / "results.json").write_text(json.dumps(_study_results(ws)))
    return ws


def _safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def study_text(ws: dict) -> str:
    return f"""name = "faults"
out = "{ws["root"] / "study-out"}"
[data]
corpus = "{ws["corpus"]}"
tokens = 2000
context = 32
window_chars = 60
heldout_tokens = 0
[[models]]
label = "a"
model = "{ws["model"]}"
hooks = [1]
[[models]]
label = "b"
model = "{ws["model"]}"
hooks = [1]
saes = "{ws["root"]}/pretrained/{{hook}}"
[sae]
k = 4
d_sae = 32
steps = 5
batch_size = 32
[compare]
label_a = "a"
label_b = "b"
n_permutations = 5
n_bootstrap = 2
pair_cards = 0
concepts = ["{ws["concepts"]}"]
"""


def _write_records(ws: dict) -> None:
    """The stage records a finished study leaves (keys of the workspace's study), without running it."""
    from saeatlas.fileio import write_json_atomic
    from saeatlas.study.config import load_study
    from saeatlas.study.plan import plan

    pretrained = ws["root"] / "pretrained" / HOOK
    pretrained.parent.mkdir()
    shutil.copytree(ws["sae"], pretrained)
    for stage in plan(load_study(ws["study"]), ws["study_out"]):
        stage.folder.mkdir(parents=True, exist_ok=True)
        stage.done_file.parent.mkdir(parents=True, exist_ok=True)
        record = {"key": stage.key, "name": stage.name, "settings": {}, "inputs": [], "summary": {}, "seconds": 1.0}
        write_json_atomic(stage.done_file, record)


def _study_results(ws: dict) -> dict:
    """A minimal valid study results.json (no compare, concepts or absorption documents)."""
    from saeatlas.study.config import load_study
    from saeatlas.study.run import RESULTS_VERSION

    study = load_study(ws["study"])
    return {
        "version": RESULTS_VERSION,
        "kind": "study",
        "study": study.to_dict(),
        "legacy": False,
        "models": [],
        "saes": [],
        "compare": None,
        "concepts": None,
        "absorption": None,
        "pair_cards": [],
        "stages": [],
        "seconds": 1.0,
    }


# ---------------------------------------------------------------- cases
def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


FILES = {
    # file kind: (workspace item, file inside it, verb arguments given the copy and the case folder)
    "store manifest": ("store", "manifest.json", lambda c, d: ["info", str(c)]),
    "SAELens cfg.json": ("sae", "cfg.json", lambda c, d: ["eval", str(c), "--activations", "ACTS"]),
    "sparsify cfg.json": ("sparsify", "cfg.json", lambda c, d: ["eval", str(c), "--activations", "ACTS"]),
    "dictionary_learning config.json": (
        "dictionary_learning",
        "config.json",
        lambda c, d: ["eval", str(c), "--activations", "ACTS"],
    ),
    "model config.json": (
        "model",
        "config.json",
        lambda c, d: (
            ["extract", "--model", str(c), "--corpus", "CORPUS", "--hooks", "1"]
            + ["--tokens", "500", "--context", "32", "--out", str(d / "out")]
        ),
    ),
    "safetensors header": ("sae", "sae_weights.safetensors", lambda c, d: ["eval", str(c), "--activations", "ACTS"]),
    "stage record": ("study_out", "compare.stage.json", lambda c, d: ["status", "STUDY", "--out", str(c)]),
    "study results": ("results", "results.json", lambda c, d: ["report", str(c)]),
    "concepts file": ("concepts", "", lambda c, d: ["status", "STUDY_WITH_CONCEPTS", "--out", str(d / "out")]),
}
"""Which verb reads each file kind, on a copy of the workspace's valid one."""


def _resolve(argv: list[str], ws: dict, case_dir: Path, copy_path: Path) -> list[str]:
    out = []
    for a in argv:
        if a == "STUDY_WITH_CONCEPTS":
            text = study_text(ws).replace(str(ws["concepts"]), str(copy_path))
            (case_dir / "study.toml").write_text(text)
            a = str(case_dir / "study.toml")
        out.append({"ACTS": str(ws["acts"]), "CORPUS": str(ws["corpus"]), "STUDY": str(ws["study"])}.get(a, a))
    return out


def file_cases(ws: dict) -> Iterator[Case]:
    """Every schema mutation of every file kind, and its bytes cut short or made non-UTF-8."""
    from saeatlas.schema import SCHEMAS, mutations

    for kind, (item, inner, verb_args) in FILES.items():
        source = ws[item] / inner if inner else ws[item]
        raw = source.read_bytes()
        load, dump = CODECS.get(source.suffix, (json.loads, lambda doc, raw: json.dumps(doc).encode()))
        valid = load(raw)
        broken: list[tuple[str, Callable[[Path], None]]] = [
            (f"{path}: {what}", _writer(dump(doc, raw))) for path, what, doc in mutations(valid, SCHEMAS[kind])
        ]
        broken += [
            ("cut in half", lambda p, raw=raw: p.write_bytes(raw[: len(raw) // 2])),
            ("empty", lambda p: p.write_bytes(b"")),
            ("not UTF-8", lambda p, raw=raw: p.write_bytes(raw.replace(b'"', b'"\xe9', 1))),
            ("a list, not a table", lambda p: p.write_text("[1, 2]")),
        ]
        verb = verb_args(Path("."), Path("."))[0]
        expect = "stale" if kind == "stage record" else "refused"
        for name, write in broken:
            yield Case(kind, verb, name, _file_preparer(ws, item, inner, write, verb_args), expect)


def _writer(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _safetensors_header(raw: bytes) -> dict:
    """The JSON header of a safetensors file: 8 bytes of little-endian length, then the header."""
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n])


def _with_safetensors_header(header: dict, raw: bytes) -> bytes:
    """The safetensors file `raw` with `header` in place of its own (offsets count from the data)."""
    n = int.from_bytes(raw[:8], "little")
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + raw[8 + n :]


CODECS = {".safetensors": (_safetensors_header, _with_safetensors_header)}
"""File suffix -> (bytes -> document, (document, original bytes) -> bytes) for files that are not plain JSON."""


def _file_preparer(ws, item, inner, write, verb_args) -> Callable[[Path], list[str]]:
    def prepare(case_dir: Path) -> list[str]:
        copy_path = _copy(ws[item], case_dir / ws[item].name)
        write(copy_path / inner if inner else copy_path)
        return _resolve(verb_args(copy_path, case_dir), ws, case_dir, copy_path)

    return prepare


BAD_INT = ["-5", "100000000000000000000", "abc", "1.5"]
BAD_FLOAT = ["nan", "inf", "-1e30", "abc"]
VERB_ARGS = {
    "extract": lambda ws, d: (
        ["--model", str(ws["model"]), "--corpus", str(ws["corpus"]), "--hooks", "1"]
        + ["--tokens", "500", "--context", "32", "--out", str(d / "out")]
    ),
    "train": lambda ws, d: ["--store", str(ws["store"]), "--hook", HOOK, *SAE_ARGS, "--out", str(d / "out")],
    "eval": lambda ws, d: [str(ws["sae"]), "--activations", str(ws["acts"]), "--tokens", "64"],
    "compare": lambda ws, d: (
        ["--store-a", str(ws["store"]), "--store-b", str(ws["store"])]
        + ["--saes-a", str(ws["sae"]), "--saes-b", str(ws["sae"]), "--hooks-a", "1", "--hooks-b", "1"]
        + ["--n-permutations", "5", "--n-bootstrap", "2", "--out", str(d / "out")]
    ),
    "absorption": lambda ws, d: (
        ["--model", str(ws["model"]), "--hook", HOOK, "--saes", str(ws["sae"])]
        + ["--words", "100", "--out", str(d / "out")]
    ),
}
"""Valid arguments of each verb with numeric flags, small enough that an accepted bad value ends quickly."""


CONFIGS = {
    "extract": ["saeatlas.data.config:ExtractConfig"],
    "train": ["saeatlas.sae.config:TrainConfig", "saeatlas.sae.stream_source:StreamConfig"],
    "eval": ["saeatlas.sae.config:EvalConfig"],
    "compare": ["saeatlas.compare.config:CompareConfig"],
    "absorption": ["saeatlas.absorption.config:AbsorptionConfig"],
}
"""The config classes whose fields are each verb's flags (train: the SAE's and, without a store, the stream's)."""


def flag_cases(ws: dict) -> Iterator[Case]:
    """Every int and float flag of every verb (from its config's field types), given each value that can only
    be a mistake."""
    import importlib

    from saeatlas.cli import _parser
    from saeatlas.config import flat_fields

    for verb, base in VERB_ARGS.items():
        fields = {}
        for config in CONFIGS[verb]:
            module, name = config.split(":")
            fields |= flat_fields(getattr(importlib.import_module(module), name))
        for field_name, flags in _parser(verb)[1].items():
            kinds = _numbers(fields[field_name][2])
            if not kinds:
                continue
            values = dict.fromkeys((BAD_FLOAT if float in kinds else []) + (BAD_INT if int in kinds else []))
            for value in values:
                yield Case("flags", verb, f"{flags[0]} {value}", _flag_preparer(ws, verb, base, flags[0], value))


def _numbers(hint) -> set[type]:
    """The number types (int, float) a field's type hint admits."""
    args = typing.get_args(hint) or (hint,)
    return {a for a in args if a in (int, float)} | (set().union(*map(_numbers, args)) if len(args) > 1 else set())


def _flag_preparer(ws, verb, base, flag, value) -> Callable[[Path], list[str]]:
    def prepare(case_dir: Path) -> list[str]:
        args = base(ws, case_dir)
        if flag in args:
            i = args.index(flag)
            args[i : i + 2] = [f"{flag}={value}"]  # = keeps argparse from reading -5 as a flag
        else:
            args.append(f"{flag}={value}")
        return [verb, *args]

    return prepare


STUDY_SHAPES = {
    "[models] as a table": lambda t: t.replace("[[models]]", "[models]", 1).replace("[[models]]\n", "[x]\n"),
    "binary": lambda t: "\0\x01\x02" + t,
    "not UTF-8": lambda t: t.replace('"faults"', '"caf\udce9"'),
    "not TOML": lambda t: t.replace("name = ", "name = = "),
    "empty": lambda t: "",
    "out is /": lambda t: re.sub(r'(?m)^out = ".*"$', 'out = "/"', t),
    "out climbs out": lambda t: t.replace('out = "', 'out = "../../../../', 1),
    "label ../x": lambda t: t.replace('label = "a"', 'label = "../x"'),
    "label empty": lambda t: t.replace('label = "a"', 'label = ""'),
    "labels collide": lambda t: (
        t.replace('label = "b"', 'label = "a-heldout"')
        .replace('"b"', '"a-heldout"')
        .replace("heldout_tokens = 0", "heldout_tokens = 500")
    ),
    "template {hook}{0}": lambda t: t.replace("/{hook}", "/{hook}{0}"),
    "template {hook": lambda t: t.replace("/{hook}", "/{hook"),
    "template {hook}{x}": lambda t: t.replace("/{hook}", "/{hook}{x}"),
    "hook out of range": lambda t: t.replace("hooks = [1]", "hooks = [1, 40]", 1),
    "missing corpus": lambda t: t.replace('/corpus"', '/no-corpus"'),
    "missing concepts file": lambda t: t.replace('concepts.json"', 'no-concepts.json"'),
    "steps = 1e20": lambda t: t.replace("steps = 5", "steps = 1e20"),
    "batch_size = 0": lambda t: t.replace("batch_size = 32", "batch_size = 0"),
    "k > d_sae": lambda t: t.replace("k = 4", "k = 64"),
    "threshold = 5": lambda t: t.replace("n_permutations = 5", "n_permutations = 5\nthreshold = 5"),
    "ce_tokens = -1": lambda t: t.replace("batch_size = 32", "batch_size = 32\nce_tokens = -1"),
}
"""Whole-file mistakes in a study."""


def study_cases(ws: dict, verbs=("status",)) -> Iterator[Case]:
    """Every key of the study set to a wrong type or removed, and the shapes of STUDY_SHAPES."""
    from saeatlas.config import flat_defaults
    from saeatlas.study import config

    tables = {"": config.Study, "data": config.DataSettings, "models": config.ModelSettings, "sae": config.SAESettings}
    tables |= {"compare": config.CompareSettings, "absorption": config.AbsorptionSettings}
    text = study_text(ws)
    data = tomllib.loads(text)
    edits: list[tuple[str, Callable[[], str]]] = [(n, lambda f=f: f(text)) for n, f in STUDY_SHAPES.items()]
    for table, key, value in _keys(data):
        required = key not in flat_defaults(tables[table])
        for what, new in (("a list", [1]), ("a table", {"x": 1}), ("a string", "x"), ("removed", None)):
            if type(new) is type(value) or (what == "removed" and not required):
                continue
            doc = copy.deepcopy(data)
            target = doc[table][0] if table == "models" else (doc[table] if table else doc)
            if new is None:
                del target[key]
            else:
                target[key] = new
            edits.append((f"{table + '.' if table else ''}{key}: {what}", lambda doc=doc: _toml(doc)))
    for verb in verbs:
        for name, make in edits:
            yield Case("study file", verb, name, _study_preparer(verb, make))


def _keys(data: dict) -> Iterator[tuple[str, str, typing.Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from ((key, k, v) for k, v in value.items())
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            yield from ((key, k, v) for k, v in value[0].items())
        else:
            yield ("", key, value)


def _toml(doc: dict) -> str:
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in doc.items() if not isinstance(v, (dict, list)) or k == "x"]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += [f"[{k}]", *(f"{a} = {value(b)}" for a, b in v.items())]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines += [f"[[{k}]]", *(f"{a} = {value(b)}" for a, b in item.items())]
        elif isinstance(v, list):
            lines.append(f"{k} = {value(v)}")
    return "\n".join(lines) + "\n"


def _study_preparer(verb: str, make: Callable[[], str]) -> Callable[[Path], list[str]]:
    def prepare(case_dir: Path) -> list[str]:
        path = case_dir / "study.toml"
        text = make()
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        return [verb, str(path), "--out", str(case_dir / "out")] if "out = " not in text else [verb, str(path)]

    return prepare


def all_cases(ws: dict, study_verbs=("status",)) -> list[Case]:
    return [*file_cases(ws), *flag_cases(ws), *study_cases(ws, study_verbs)]


# ---------------------------------------------------------------- running
def run_in_process(case: Case, case_dir: Path) -> Outcome:
    """Run the case through `saeatlas.cli.main` in this process, its stderr captured."""
    import contextlib
    import io

    from saeatlas.cli import main

    case_dir.mkdir(parents=True)
    argv = case.prepare(case_dir)
    before = listing(case_dir)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except Exception:  # noqa: BLE001 - what a user would see as a traceback
            import traceback

            traceback.print_exc()
            code = 1
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return Outcome(case, code, lines, _left(case_dir, before), out.getvalue())


def run_subprocess(case: Case, case_dir: Path, env: dict | None = None) -> Outcome:
    """Run the case as a user would: a fresh `python -m saeatlas` process."""
    import subprocess
    import sys

    case_dir.mkdir(parents=True)
    argv = case.prepare(case_dir)
    before = listing(case_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "saeatlas", *argv],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=case_dir,
        timeout=600,
    )
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    return Outcome(case, proc.returncode, err, _left(case_dir, before), proc.stdout)


def _left(case_dir: Path, before: dict[str, int]) -> list[str]:
    """What the failed verb left in the case's folder (new paths, or files whose size changed)."""
    after = listing(case_dir)
    return sorted(p for p, size in after.items() if p not in before or (size >= 0 and before[p] != size))
