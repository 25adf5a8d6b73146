"""Pretrained SAEs by name: `saelens:<release>/<sae_id>` and `hf:<owner>/<repo>/<folder>` -> a local folder.

Both kinds of name may hold `{hook}` / `{layer}` like a folder template (`{hook}` is tried in every spelling
of the hook: blocks.3.hook_resid_post, resid_post.3, layers.3); a name without braces is a release or a folder
holding one SAE per hook, named in any spelling.  The files come through huggingface_hub's cache: the local
cache first, then the hub (only the SAE's own folder is fetched); with HF_HUB_OFFLINE=1 the local cache only.

- `saelens:` follows sae-lens's own directory (`pretrained_saes.yaml` in the sae_lens package, read here with
  PyYAML, sae_lens itself is never imported): a release maps to a hub repo and each sae_id to a folder in it.
  As in sae-lens, a release not in the directory is taken as a hub repo id and the sae_id as a folder in it.
  Releases in SAELens's own layout (no `conversion_func`) are read; the release's `config_overrides` and
  `norm_scaling_factor` are applied as sae-lens applies them.
- `hf:` needs no sae-lens: any SAELens, sparsify or dictionary_learning folder in a hub repo.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import logging
import os
import string
from pathlib import Path

from ..errors import HubUnavailableError, MissingPackageError, SaeAtlasError
from ..fileio import cache_dir, write_json_atomic
from ..models.hooks import canonical_hook, hook_spellings

log = logging.getLogger("saeatlas")

SAELENS = "saelens:"
HUB = "hf:"
INSTALL = "install sae-lens: pip install 'saeatlas[pretrained]'"
_READ_FIELDS = frozenset(
    {"d_in", "d_sae", "architecture", "k", "apply_b_dec_to_input", "rescale_acts_by_decoder_norm"}
    | {"normalize_activations", "activation_fn", "activation_fn_str", "activation_fn_kwargs", "hook_name"}
)
"""cfg.json fields formats.load_sae reads: a release's `config_overrides` of these change the SAE."""


def is_pretrained_name(template: str | Path) -> bool:
    """Whether an SAE template names pretrained SAEs (`saelens:...` or `hf:...`) rather than a local path."""
    return str(template).startswith((SAELENS, HUB))


def pretrained_folder(template: str, hook: str) -> Path:
    """The local folder (in huggingface_hub's cache) of the SAE `template` names for `hook`."""
    kind, _, rest = str(template).partition(":")
    if not rest.strip("/"):
        raise SaeAtlasError(
            f"SAE name {template!r} names nothing: write saelens:<release>/<sae_id> or hf:<owner>/<repo>"
        )
    names = _filled(rest.strip("/"), canonical_hook(hook))
    if kind + ":" == SAELENS:
        return _saelens_folder(names, template, hook)
    repo_id, folders = _split_repo(names, template)
    return _hub_sae(repo_id, folders, template)


def _has_fields(text: str) -> bool:
    """Whether `text` holds {hook} / {layer} fields (a template of one SAE per hook)."""
    return any(field for _, field, _, _ in string.Formatter().parse(text))


def names_one_sae(name: str) -> bool:
    """Whether a pretrained name names one SAE (`saelens:<release>/<sae_id>`, `hf:<owner>/<repo>/<folder>`)
    rather than one per hook (a template with {hook} / {layer}, or a whole release or repo)."""
    kind, _, rest = str(name).partition(":")
    if _has_fields(rest):
        return False
    return rest.strip("/").count("/") >= (1 if kind + ":" == SAELENS else 2)


def pretrained_exact(name: str) -> Path:
    """The local folder of the one SAE `name` names (`names_one_sae`)."""
    kind, _, rest = str(name).partition(":")
    rest = rest.strip("/")
    if kind + ":" == SAELENS:
        return _saelens_folder([rest], name, "it")
    repo_id, folders = _split_repo([rest], name)
    return _hub_sae(repo_id, folders, name)


def _filled(rest: str, hook: str) -> list[str]:
    """`rest` with {hook} / {layer} filled, once per spelling of `hook`; without fields, `rest/<spelling>` (as a
    folder template without fields is a folder holding one SAE per hook)."""
    layer = hook.rsplit(".", 1)[1]
    if _has_fields(rest):
        return list(dict.fromkeys(rest.format(hook=s, layer=layer) for s in hook_spellings(hook)))
    return [f"{rest}/{s}" for s in hook_spellings(hook)]


def _split_repo(names: list[str], template: str) -> tuple[str, list[str]]:
    """(repo id, folders in it) of `owner/repo/folder` names (the repo part never holds a field)."""
    parts = template.partition(":")[2].strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]) or "{" in "".join(parts[:2]):
        raise SaeAtlasError(f"SAE name {template!r} names no hub repo: write hf:<owner>/<repo>[/<folder>]")
    repo_id = "/".join(parts[:2])
    return repo_id, [n[len(repo_id) + 1 :] for n in names if n.startswith(repo_id + "/")]


# ---------------------------------------------------------------- sae-lens's directory
def saelens_directory_file() -> Path:
    """sae-lens's `pretrained_saes.yaml`, found without importing sae_lens (its import takes seconds)."""
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"SAELens release names need sae-lens's directory of releases: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    if not path.is_file():
        raise MissingPackageError(f"the installed sae-lens has no {path.name}: reinstall it ({INSTALL})")
    return path


@functools.cache
def _directory(path: Path) -> dict:
    import yaml

    with path.open() as fh:
        data = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(data, dict):
        raise SaeAtlasError(f"{path} is not sae-lens's directory of releases: reinstall sae-lens ({INSTALL})")
    return data


def saelens_directory() -> dict:
    """release -> {repo_id, conversion_func, saes: [{id, path, ...}], config_overrides, ...} as sae-lens ships it."""
    return _directory(saelens_directory_file())


def _saelens_folder(names: list[str], template: str, hook: str) -> Path:
    directory = saelens_directory()
    release = names[0].split("/", 1)[0]
    entry = directory.get(release)
    if entry is None:
        if names[0].count("/") >= 2:  # sae-lens's rule: not a release, so a hub repo id and a folder in it
            repo_id, folders = _split_repo(names, template)
            return _hub_sae(repo_id, folders, template)
        close = difflib.get_close_matches(release, list(directory), n=3, cutoff=0.5)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise SaeAtlasError(
            f"unknown SAELens release '{release}'{hint}: name one from sae-lens's pretrained_saes.yaml, or a hub "
            "repo as hf:<owner>/<repo>/<folder>"
        )
    paths = {str(s["id"]): str(s["path"]) for s in entry.get("saes") or []}
    ids = [n.split("/", 1)[1] for n in names if n.startswith(release + "/")]
    sae_id = next((i for i in ids if i in paths), None)
    if sae_id is None:
        shown = ids[0] if ids else "(none)"
        close = difflib.get_close_matches(shown, list(paths), n=3, cutoff=0.5) or list(paths)[:4]
        more = ", ..." if len(paths) > len(close) else ""
        raise SaeAtlasError(
            f"SAELens release '{release}' has no SAE '{shown}' for {hook}: its ids include {', '.join(close)}{more} "
            "(write {layer} or {hook} where the id names the layer, or give the release alone)"
        )
    conversion = entry.get("conversion_func")
    if conversion not in (None, "sae_lens"):
        raise SaeAtlasError(
            f"SAELens release '{release}' needs sae-lens's '{conversion}' conversion, which saeatlas does not do: "
            f"save it with sae-lens (SAE.from_pretrained('{release}', '{sae_id}').save_model(folder)) and give that folder"
        )
    folder = _hub_sae(str(entry["repo_id"]), [paths[sae_id]], template)
    return _with_release_settings(folder, release, sae_id, entry)


def _with_release_settings(folder: Path, release: str, sae_id: str, entry: dict) -> Path:
    """`folder`, or (when the release's `config_overrides` change what saeatlas reads, or its
    `norm_scaling_factor` is to be folded in, as sae-lens's from_pretrained does) a folder in saeatlas's cache
    with the cfg.json sae-lens would build and the weights, folded where they need to be."""
    import json

    raw_overrides = entry.get("config_overrides") or {}
    if raw_overrides.get("model_from_pretrained_kwargs"):
        log.warning(
            "SAELens release %s was trained on a TransformerLens model loaded with %s; saeatlas reads the Hugging "
            "Face model as it is, so its activations may differ from the SAE's training data",
            release,
            raw_overrides["model_from_pretrained_kwargs"],
        )
    overrides = {k: v for k, v in raw_overrides.items() if k in _READ_FIELDS}
    cfg = json.loads((folder / "cfg.json").read_text()) if (folder / "cfg.json").is_file() else {}
    cfg.update(overrides)
    factors = {str(s["id"]): s["norm_scaling_factor"] for s in entry.get("saes") or [] if "norm_scaling_factor" in s}
    fold = cfg.get("normalize_activations") == "expected_average_only_in" and sae_id in factors
    if not overrides and not fold:
        return folder
    key = hashlib.sha256(f"{folder.resolve()}|{sorted(overrides.items())}|{fold}".encode()).hexdigest()[:16]
    target = cache_dir() / "pretrained" / release / key
    if (target / "cfg.json").is_file():
        return target
    tmp = target.with_name(f".{key}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    weights = folder / "sae_weights.safetensors"
    if fold:
        from safetensors.torch import load_file, save_file

        # sae-lens's fold_activation_norm_scaling_factor: the SAE then reads raw (unscaled) activations
        t, f = load_file(weights), float(factors[sae_id])
        t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] * f, t["W_dec"] / f, t["b_dec"] / f
        save_file(t, tmp / weights.name)
        cfg["normalize_activations"] = "none"
    else:
        (tmp / weights.name).symlink_to(weights.resolve())
    write_json_atomic(tmp / "cfg.json", cfg)
    try:
        tmp.rename(target)
    except OSError:  # another process made it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------- the hub's cache
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.iterdir())


def _hub_sae(repo_id: str, folders: list[str], name: str) -> Path:
    """The first of `folders` (paths inside hub repo `repo_id`; '' is the repo's root) that holds files, from
    the local Hugging Face cache or else downloaded (that folder alone)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = [f"{f}/*" for f in folders]

    def found(snapshot: str) -> Path | None:
        return next((Path(snapshot) / f for f in folders if _has_files(Path(snapshot) / f)), None)

    where = f"{repo_id}/{folders[0]}".rstrip("/")
    try:
        if (folder := found(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))) is not None:
            return folder
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if _offline():
        raise HubUnavailableError(
            f"SAE '{where}' ({name}) is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it "
            "once where the hub is reachable, or give a local SAE folder"
        )
    try:
        snapshot = snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10)
    except RepositoryNotFoundError:
        raise SaeAtlasError(
            f"the Hugging Face hub has no repo '{repo_id}' ({name}), or it is private: check the name"
        ) from None
    except Exception as exc:  # network errors come in many types
        raise HubUnavailableError(
            f"cannot fetch SAE '{where}' ({name}) from the Hugging Face hub ({type(exc).__name__}): check the "
            "network, or give a local SAE folder"
        ) from exc
    if (folder := found(snapshot)) is None:
        raise SaeAtlasError(f"hub repo '{repo_id}' has no SAE folder '{folders[0]}' ({name}): check the path in it")
    return folder
