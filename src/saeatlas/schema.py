"""Schemas of every file saeatlas reads, checked on read; a bad file gives one line naming file, field and want.

Each schema is a TypedDict (optional keys `NotRequired`, ranges `Annotated[int, Ge(1), Le(...)]`, choices
`Literal`), validated strictly by pydantic (no "3" for 3, no 1 for true).  Keys a schema does not name are
allowed (files of other libraries hold many), but the keys saeatlas uses have their types and ranges checked.
Rules across fields (a shard's index equals its place, k <= d_sae) live in `RULES`, by schema.

`checked(doc, schema, path, fix)` returns `doc` unchanged or raises one line::

    runs/store/manifest.json: field 'shards[3].n_tokens' = 'abc': expected an integer >= 1; extract again

`SCHEMAS` lists (file kind -> schema) and `mutations(doc, schema)` yields broken copies of a valid document
(wrong types, values out of range, missing keys), so fault tests can be made from the schemas themselves.
"""

from __future__ import annotations

import copy
import json
import math
import struct
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, NotRequired, Union, get_args, get_origin, get_type_hints

from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict, is_typeddict

from .errors import SaeAtlasError

MAX_WIDTH = 1 << 20
"""A model or SAE input wider than this (1M) can only be a mistake."""
MAX_D_SAE = 1 << 24
"""More latents than this (16.7M, the largest SAEs published) can only be a typo (as sae.config.MAX_D_SAE)."""
MAX_TOKENS = 10**12
"""More tokens than this (as data.config.MAX_TOKENS) can only be a typo."""
MAX_LAYERS = 4096
MAX_VOCAB = 1 << 24

HEX16 = r"^[0-9a-f]{16}$"
HEX64 = r"^[0-9a-f]{64}$"
_PATTERNS = {HEX16: "16 hex digits (a stage key)", HEX64: "a sha256 (64 hex digits)"}

Count = Annotated[int, Ge(0), Le(MAX_TOKENS)]
Positive = Annotated[int, Ge(1)]
Width = Annotated[int, Ge(1), Le(MAX_WIDTH)]
Latents = Annotated[int, Ge(1), Le(MAX_D_SAE)]
Layers = Annotated[int, Ge(1), Le(MAX_LAYERS)]
Seconds = Annotated[float, Ge(0)]
Sha256 = Annotated[str, StringConstraints(pattern=HEX64)]
Key16 = Annotated[str, StringConstraints(pattern=HEX16)]
Words = Annotated[list[Annotated[str, StringConstraints(min_length=1)]], MinLen(1)]
StoreDtype = Literal["bfloat16", "float32"]
"""The dtypes a store keeps (data.config.DTYPES)."""


# ---------------------------------------------------------------- activation store (data/store.py)
class ManifestModel(TypedDict):
    spec: str
    name: NotRequired[str]
    identity: str
    kind: str
    model_type: str
    n_layers: Layers
    d_model: Width


ManifestTokenizer = TypedDict(
    "ManifestTokenizer",
    {
        "identity": str,
        "class": str,
        "prefix_ids": list[Annotated[int, Ge(0)]],
        "suffix_ids": list[Annotated[int, Ge(0)]],
        "vocab_size": Annotated[int, Ge(1), Le(MAX_VOCAB)],
    },
)


class ManifestCorpus(TypedDict):
    spec: str
    identity: str
    n_documents: Count


class ManifestSettings(TypedDict):
    split: str
    seed: Annotated[int, Ge(0)]
    context: Annotated[int, Ge(2), Le(MAX_WIDTH)]
    tokens: Annotated[int, Ge(1), Le(MAX_TOKENS)]
    window_chars: NotRequired[Positive]


class ManifestFlags(TypedDict):
    special: Annotated[int, Ge(0), Le(255)]
    first_position: Annotated[int, Ge(0), Le(255)]
    excluded_by_default: Annotated[int, Ge(0), Le(255)]


class ManifestShard(TypedDict):
    index: Count
    n_windows: Count
    n_tokens: Annotated[int, Ge(1), Le(MAX_TOKENS)]
    n_tokens_usable: Count
    last_doc_id: Annotated[int, Ge(-1)]
    files: dict[str, Sha256]


class Manifest(TypedDict):
    """manifest.json of an activation store (data/store.py, data/extract.py)."""

    format: Literal["saeatlas-activation-store"]
    version: Literal[1]
    complete: bool
    settings: ManifestSettings
    model: ManifestModel
    tokenizer: ManifestTokenizer
    corpus: ManifestCorpus
    hooks: Annotated[list[Annotated[str, StringConstraints(min_length=1)]], MinLen(1)]
    dtype: StoreDtype
    flags: NotRequired[ManifestFlags]
    shards: list[ManifestShard]
    settings_sha256: Sha256
    n_tokens: NotRequired[Count]
    n_tokens_usable: NotRequired[Count]
    n_windows: NotRequired[Count]
    n_documents_read: NotRequired[Count]
    corpus_exhausted: NotRequired[bool]


def _manifest_rules(doc: dict) -> Iterator[tuple[str, Any, str]]:
    hooks = doc["hooks"]
    if len(set(hooks)) != len(hooks):
        yield "hooks", hooks, "each hook once"
    for i, shard in enumerate(doc["shards"]):
        if shard["index"] != i:
            yield f"shards[{i}].index", shard["index"], f"{i} (its place in the list)"
        if shard["n_tokens_usable"] > shard["n_tokens"]:
            yield f"shards[{i}].n_tokens_usable", shard["n_tokens_usable"], f"at most n_tokens ({shard['n_tokens']})"
        name = f"shard-{i:05d}"
        for rel in [f"index/{name}.npy", f"documents/{name}.jsonl"] + [f"{h}/{name}.npy" for h in hooks]:
            if rel not in shard["files"]:
                yield f"shards[{i}].files", sorted(shard["files"]), f"an entry for {rel}"
    if doc["complete"]:
        total = sum(s["n_tokens"] for s in doc["shards"])
        if "n_tokens" not in doc:
            yield "n_tokens", None, "the total of a complete store"
        elif doc["n_tokens"] != total:
            yield "n_tokens", doc["n_tokens"], f"the sum of the shards' n_tokens ({total})"
        if "n_tokens_usable" in doc and doc["n_tokens_usable"] > doc.get("n_tokens", total):
            yield "n_tokens_usable", doc["n_tokens_usable"], "at most n_tokens"


# ---------------------------------------------------------------- SAE folders (sae/formats.py)
class OurSAE(TypedDict):
    arch: Literal["relu", "topk", "batchtopk", "jumprelu", "gba", "mp"]
    d_in: Width
    d_sae: Latents
    k: Latents


class OurSection(TypedDict):
    sae: NotRequired[OurSAE]


class SAELensMetadata(TypedDict):
    hook_name: NotRequired[str | None]


class SAELensCfg(TypedDict):
    """cfg.json of a SAELens folder (saeatlas writes this layout too, its own settings under `saeatlas`)."""

    d_in: Width
    d_sae: Latents
    architecture: NotRequired[str]
    k: NotRequired[Latents | None]
    apply_b_dec_to_input: NotRequired[bool]
    rescale_acts_by_decoder_norm: NotRequired[bool]
    normalize_activations: NotRequired[str | bool | None]  # a bool in cfgs older than SAELens 6
    metadata: NotRequired[SAELensMetadata | None]
    saeatlas: NotRequired[OurSection]


def _k_at_most_d_sae(doc: dict) -> Iterator[tuple[str, Any, str]]:
    if isinstance(doc.get("k"), int) and doc["k"] > doc["d_sae"]:
        yield "k", doc["k"], f"at most d_sae ({doc['d_sae']})"
    ours = (doc.get("saeatlas") or {}).get("sae")
    if ours:
        if ours["k"] > ours["d_sae"]:
            yield "saeatlas.sae.k", ours["k"], f"at most saeatlas.sae.d_sae ({ours['d_sae']})"
        for name in ("d_in", "d_sae"):
            if ours[name] != doc[name]:
                yield f"saeatlas.sae.{name}", ours[name], f"{doc[name]} (the cfg's {name})"


class SparsifyCfg(TypedDict):
    """cfg.json of a sparsify (EleutherAI) SAE folder."""

    k: NotRequired[Latents]
    d_in: NotRequired[Width]
    num_latents: NotRequired[Annotated[int, Ge(0), Le(MAX_D_SAE)]]
    expansion_factor: NotRequired[Annotated[int, Ge(1), Le(1 << 16)]]


class DictionaryLearningTrainer(TypedDict):
    k: NotRequired[Latents]
    activation_dim: NotRequired[Width]
    dict_size: NotRequired[Latents]


class DictionaryLearningConfig(TypedDict):
    """config.json of a dictionary_learning folder (beside ae.pt)."""

    trainer: NotRequired[DictionaryLearningTrainer]


SafetensorsDtype = Literal[
    "BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "I64", "U64", "F64"
]
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2}
_ITEMSIZE |= {"I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class SafetensorsTensor(TypedDict):
    dtype: SafetensorsDtype
    shape: list[Annotated[int, Ge(0), Le(MAX_TOKENS)]]
    data_offsets: Annotated[list[Annotated[int, Ge(0)]], MinLen(2), MaxLen(2)]


SafetensorsHeader = dict[str, SafetensorsTensor]
"""The JSON header of a .safetensors file (without its `__metadata__`, a table of strings)."""


# ---------------------------------------------------------------- language model folders (models/loading.py)
class ModelConfig(TypedDict):
    """config.json of a Hugging Face model folder: the fields saeatlas reads (others are transformers')."""

    model_type: Annotated[str, StringConstraints(min_length=1)]
    hidden_size: NotRequired[Width]
    num_hidden_layers: NotRequired[Layers]
    vocab_size: NotRequired[Annotated[int, Ge(1), Le(MAX_VOCAB)]]


# ---------------------------------------------------------------- study stages (study/stages.py)
class StartedRecord(TypedDict):
    """<product>.started.json: the key a stage began under."""

    key: Key16
    name: str


class StageRecord(TypedDict):
    """<product>.stage.json: the key, summary and time of a finished stage."""

    key: Key16
    name: str
    settings: NotRequired[dict]
    inputs: NotRequired[list[Key16]]
    summary: dict
    seconds: Seconds


# ---------------------------------------------------------------- results read back (report, study)
class CompareConfig(TypedDict):
    measures: list[str]
    method: str
    store_a: str
    store_b: str
    saes_a: str
    saes_b: str


class CompareResults(TypedDict):
    """results.json of `saeatlas compare` (compare/grid.py; version 4)."""

    version: Literal[4]
    kind: Literal["compare"]
    config: CompareConfig
    hooks_a: list[str]
    hooks_b: list[str]
    pairs: list[dict]
    skyline: NotRequired[list[dict]]


class ConceptsConfig(TypedDict):
    measures: list[str]


class ConceptsResults(TypedDict):
    """concepts.json of `saeatlas concepts` (compare/grid.py; version 4)."""

    version: Literal[4]
    kind: Literal["concepts"]
    config: ConceptsConfig
    concepts: dict[str, list[str]]
    hooks_a: list[str]
    hooks_b: list[str]
    entries: list[dict]


class AbsorptionSAE(TypedDict):
    name: str
    letters: list[dict]


class AbsorptionResults(TypedDict):
    """absorption.json of `saeatlas absorption` (absorption/run.py; version 2)."""

    version: Literal[2]
    kind: Literal["absorption"]
    model: str
    hook: str
    probes: list[dict]
    saes: list[AbsorptionSAE]


class StudyResults(TypedDict):
    """results.json of `saeatlas run` (study/run.py; version 4), which `saeatlas report` renders."""

    version: Literal[4]
    kind: Literal["study"]
    study: dict
    models: list[dict]
    saes: list[dict]
    compare: CompareResults | None
    concepts: ConceptsResults | None
    absorption: AbsorptionResults | None
    pair_cards: list[dict]
    stages: list[dict]
    seconds: Seconds


class PairCard(TypedDict):
    hook_a: str
    hook_b: str
    idx_a: Annotated[int, Ge(0)]
    idx_b: Annotated[int, Ge(0)]
    corr: float | None
    a: list
    b: list


PairCards = list[PairCard]
"""cards/cards.json of a study."""


class EvalEntry(TypedDict):
    hook: NotRequired[str]
    metrics: dict


EvalMetrics = dict[str, EvalEntry]
"""metrics.json of a study's evaluate stage: SAE folder -> its figures."""

ConceptsFile = Annotated[dict[str, Words], MinLen(1)]
"""A concepts file (.toml or .json): concept name -> non-empty list of non-empty words."""


# ---------------------------------------------------------------- registry
SCHEMAS: dict[str, Any] = {
    "store manifest": Manifest,
    "SAELens cfg.json": SAELensCfg,
    "sparsify cfg.json": SparsifyCfg,
    "dictionary_learning config.json": DictionaryLearningConfig,
    "safetensors header": SafetensorsHeader,
    "model config.json": ModelConfig,
    "stage record": StageRecord,
    "started record": StartedRecord,
    "compare results": CompareResults,
    "concepts results": ConceptsResults,
    "absorption results": AbsorptionResults,
    "study results": StudyResults,
    "pair cards": PairCards,
    "evaluation metrics": EvalMetrics,
    "concepts file": ConceptsFile,
}
"""File kind -> schema of every file saeatlas reads (the study TOML has its own checks: study/config.py)."""

RULES: dict[Any, Callable[[Any], Iterator[tuple[str, Any, str]]]] = {
    Manifest: _manifest_rules,
    SAELensCfg: _k_at_most_d_sae,
}
"""Schema -> rules across its fields: yields (field, value, what was expected) for each broken one."""

RESULT_VERSIONS = {"compare": 4, "concepts": 4, "absorption": 2, "study": 4}
RESULT_SCHEMAS = {
    "compare": CompareResults,
    "concepts": ConceptsResults,
    "absorption": AbsorptionResults,
    "study": StudyResults,
}


# ---------------------------------------------------------------- checking
@cache
def _adapter(schema: Any) -> TypeAdapter:
    return TypeAdapter(schema)


def short_repr(value: Any, width: int = 40) -> str:
    """repr of `value`, cut to `width` characters."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    return "an integer" if isinstance(value, int) else "a number" if isinstance(value, float) else "a value"


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a table (JSON object)",
    "model_type": "a table (JSON object)",
    "typed_dict_type": "a table (JSON object)",
    "none_required": "null",
    "finite_number": "a finite number",
}


def _expectation(err: dict) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return f"{_kind(bound)} {sign} {bound:g}" if isinstance(bound, float) else f"{_kind(bound)} {sign} {bound}"
    if kind == "literal_error":
        return ctx["expected"]
    if kind == "string_pattern_mismatch":
        return _PATTERNS.get(ctx["pattern"], f"a string matching {ctx['pattern']}")
    if kind == "string_too_short":
        return "a non-empty string"
    if kind == "too_short":
        n, what = ctx.get("min_length", 1), "table" if isinstance(value, dict) else "list"
        return f"a non-empty {what}" if n == 1 else f"a {what} of at least {n} items"
    if kind == "too_long":
        return f"at most {ctx.get('max_length')} items"
    return err["msg"][0].lower() + err["msg"][1:]


def field_path(parts: list | tuple) -> str:
    """('shards', 3, 'n_tokens') -> 'shards[3].n_tokens'."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _clean_loc(doc: Any, loc: tuple, missing: bool) -> list:
    """`loc` without pydantic's union tags ('int', 'none', 'CompareResults'): only the steps found in `doc`
    (and, for a missing key, that key)."""
    parts, here = [], doc
    for i, step in enumerate(loc):
        found = isinstance(here, dict) and step in here
        found |= isinstance(here, (list, tuple)) and isinstance(step, int) and 0 <= step < len(here)
        if found:
            here = here[step]
        elif not (missing and i == len(loc) - 1):
            continue
        parts.append(step)
    return parts


def problem(doc: Any, err: dict) -> str:
    """One pydantic error of `doc` in plain English: "field 'a[3].b' = 'abc': expected an integer >= 1"."""
    missing = err["type"] == "missing"
    where = field_path(_clean_loc(doc, tuple(err["loc"]), missing))
    if missing:
        return f"missing key '{where}'"
    value = short_repr(err.get("input"))
    if not where:
        return f"the whole file = {value}: expected {_expectation(err)}"
    return f"field '{where}' = {value}: expected {_expectation(err)}"


def schema_problem(doc: Any, schema: Any) -> str | None:
    """What is wrong with `doc` under `schema` (types, ranges, missing keys, then `RULES`), or None."""
    try:
        _adapter(schema).validate_python(doc, strict=True)
    except ValidationError as exc:
        errors = exc.errors()
        first = problem(doc, errors[0])
        # a value that may be one of several types (int | None) gives one error per type: say all of them
        head = first.split(": expected ")[0]
        alternatives = [
            problem(doc, e).split(": expected ")[-1] for e in errors[1:] if problem(doc, e).startswith(head)
        ]
        if alternatives and ": expected " in first:
            first = " or ".join([first, *dict.fromkeys(a for a in alternatives if a not in first)])
        return first
    rules = RULES.get(schema)
    for where, value, expected in rules(doc) if rules else ():
        return f"field '{where}' = {short_repr(value)}: expected {expected}"
    return None


def checked(doc: Any, schema: Any, path: str | Path, fix: str, error: type[Exception] | None = None) -> Any:
    """`doc` (read from `path`) if it fits `schema`; else `error` (SaeAtlasError by default) with one line:
    "<path>: field 'shards[3].n_tokens' = 'abc': expected an integer >= 1; <fix>"."""
    found = schema_problem(doc, schema)
    if found is not None:
        raise (error or SaeAtlasError)(f"{path}: {found}; {fix}")
    return doc


def read_checked_json(
    path: str | Path, schema: Any, missing: str, fix: str, error: type[Exception] | None = None
) -> Any:
    """The JSON document in `path`, checked against `schema` (`fileio.read_json`'s errors, then `checked`)."""
    from .fileio import read_json

    return checked(read_json(Path(path), missing, fix, error), schema, path, fix, error)


def checked_results(doc: Any, kind: str, path: str | Path, rerun: str) -> dict:
    """A results document of `kind` (compare, concepts, absorption, study) read back from `path`: its kind, its
    version (another saeatlas version's results say so) and the fields the report reads."""
    if isinstance(doc, dict) and doc.get("kind") != kind and doc.get("kind") in RESULT_VERSIONS:
        raise SaeAtlasError(f"{path} holds {doc.get('kind')} results, not {kind} results: {rerun}")
    if isinstance(doc, dict) and "version" in doc and doc["version"] != RESULT_VERSIONS[kind]:
        raise SaeAtlasError(
            f"{path} was made by another saeatlas version ({kind} results version {short_repr(doc['version'])}; "
            f"this saeatlas reads version {RESULT_VERSIONS[kind]}): {rerun}"
        )
    return checked(doc, RESULT_SCHEMAS[kind], path, rerun)


# ---------------------------------------------------------------- safetensors
MAX_HEADER = 100 << 20
"""safetensors' own limit on the JSON header."""


def read_safetensors_header(path: str | Path, fix: str, error: type[Exception] | None = None) -> dict:
    """The header of the .safetensors file at `path` ({name: {dtype, shape, data_offsets}}, without
    `__metadata__`), checked: a header that is cut, not JSON, or whose tensors do not fit the file raises
    `error` with one line naming the file."""
    error = error or SaeAtlasError
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = path.stat().st_size
            if len(head) < 8:
                raise error(f"{path}: not a safetensors file (only {len(head)} bytes); {fix}")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER, size - 8):
                raise error(f"{path}: not a safetensors file, or truncated (header of {n} bytes in {size}); {fix}")
            raw = fh.read(n)
    except OSError as exc:
        raise error(f"cannot read {path} ({exc.strerror or exc}); {fix}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise error(f"{path}: damaged safetensors file (its header is not JSON); {fix}") from None
    if not isinstance(header, dict):
        raise error(f"{path}: damaged safetensors file (its header is not a table); {fix}")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise error(f"{path}: field '__metadata__' = {short_repr(meta)}: expected a table of strings; {fix}")
    checked(header, SafetensorsHeader, path, fix, error)
    data = size - 8 - n
    for name, t in header.items():
        begin, end = t["data_offsets"]
        want = math.prod(t["shape"]) * _ITEMSIZE[t["dtype"]]
        if end - begin != want:
            raise error(
                f"{path}: field '{name}.data_offsets' = {[begin, end]}: expected {want} bytes "
                f"({t['dtype']} {t['shape']}); {fix}"
            )
        if end > data:
            raise error(f"{path}: tensor '{name}' ends at byte {end} of {data}: the file is truncated; {fix}")
    return header


# ---------------------------------------------------------------- mutations (fault tests)
def _unwrap(tp: Any) -> tuple[Any, list]:
    """(the bare type, its Annotated metadata) of `tp`, NotRequired stripped."""
    meta: list = []
    while True:
        origin = get_origin(tp)
        if origin is NotRequired:
            tp = get_args(tp)[0]
        elif origin is Annotated:
            args = get_args(tp)
            tp, meta = args[0], meta + list(args[1:])
        else:
            return tp, meta


def _bounds(meta: list) -> tuple[Any, Any, str | None]:
    low = high = pattern = None
    for m in meta:
        if isinstance(m, Ge):
            low = m.ge
        elif isinstance(m, Le):
            high = m.le
        elif isinstance(m, StringConstraints) and m.pattern:
            pattern = m.pattern
    return low, high, pattern


def _wrong_type(tp: Any) -> Any:
    """A value that is not of type `tp` (a string where a number belongs, a list where a table belongs)."""
    origin = get_origin(tp) or tp
    if tp is str or origin is Literal and isinstance(get_args(tp)[0], str):
        return 12345
    if origin in (dict,) or is_typeddict(tp):
        return ["not", "a", "table"]
    if origin in (list, tuple):
        return {"not": "a list"}
    if tp is bool:
        return "yes"
    return "abc"


def _value_mutations(tp: Any, meta: list, value: Any) -> Iterator[tuple[str, Any]]:
    """(what, broken value) for one field of type `tp` holding `value`."""
    bare, more = _unwrap(tp)
    meta = meta + more
    union = get_origin(bare) in (Union, UnionType)
    options = [a for a in get_args(bare) if a is not type(None)] if union else [bare]
    if len(options) != 1:  # int | None and the like: a string is neither
        yield "wrong type", "abc" if str not in options else 12345
        return
    bare = options[0]
    bare, more = _unwrap(bare)
    meta = meta + more
    yield "wrong type", _wrong_type(bare)
    low, high, pattern = _bounds(meta)
    if low is not None:
        yield "below range", low - 1
    if high is not None:
        yield "above range", high + 1
    if pattern is not None:
        yield "bad pattern", "zz-not-hex"
    if get_origin(bare) is Literal:
        yield "not a choice", "not-a-choice" if isinstance(get_args(bare)[0], str) else 999


def _set(doc: Any, parts: list, value: Any, delete: bool = False) -> Any:
    out = copy.deepcopy(doc)
    here = out
    for step in parts[:-1]:
        here = here[step]
    if delete:
        del here[parts[-1]]
    else:
        here[parts[-1]] = value
    return out


def mutations(doc: Any, schema: Any, _parts: list | None = None) -> Iterator[tuple[str, str, Any]]:
    """(field path, what was broken, broken copy of `doc`) for every field of `schema` present in the valid
    document `doc`: a wrong type, a value below / above its range, an unlisted choice, a pattern mismatch,
    and each required key removed.  Lists are followed into their first item; tables of one value type into
    their first key.  Every copy must fail `checked(..., schema, ...)` naming that field."""
    parts = _parts or []
    root = doc
    here = doc
    for step in parts:
        here = here[step]
    tp, _ = _unwrap(schema)
    origin = get_origin(tp)
    if is_typeddict(tp):
        hints = get_type_hints(tp, include_extras=True)
        for key, hint in hints.items():
            if key not in here:
                continue
            path = parts + [key]
            if get_origin(hint) is not NotRequired:
                yield field_path(path), "missing key", _set(root, path, None, delete=True)
            yield from _field_mutations(root, path, hint, here[key])
    elif origin in (list, dict) and here:
        key = 0 if origin is list else next(iter(here))
        value_type = get_args(tp)[-1]
        yield from _field_mutations(root, parts + [key], value_type, here[key])


def _field_mutations(root: Any, path: list, hint: Any, value: Any) -> Iterator[tuple[str, str, Any]]:
    for what, broken in _value_mutations(hint, [], value):
        yield field_path(path), what, _set(root, path, broken)
    bare, _ = _unwrap(hint)
    if is_typeddict(bare) and isinstance(value, dict) or get_origin(bare) in (list, dict) and value:
        yield from mutations(root, bare, path)
