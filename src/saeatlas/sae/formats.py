"""Read and write the folders people share SAEs in.

- SAELens: `cfg.json` + `sae_weights.safetensors` with W_enc [d_in, d_sae],
  W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in], threshold [d_sae] (JumpReLU).
  saeatlas writes this layout, with its own settings under the `saeatlas` key.
- sparsify (EleutherAI): `cfg.json` + `sae.safetensors` with encoder.weight
  [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec; TopK with `k`.
- dictionary_learning: `ae.pt` (a state dict, loaded with weights_only=True) +
  `config.json`.
"""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path

import torch

from ..config import pick
from ..errors import SaeAtlasError
from ..fileio import removed_on_failure, write_json_atomic
from ..models.hooks import canonical_hook, hook_spellings, template_problem, transformer_lens_name
from ..schema import (
    DictionaryLearningConfig,
    SAELensCfg,
    SparsifyCfg,
    read_checked_json,
    read_safetensors_header,
)
from .config import SAEConfig
from .model import SparseAutoencoder

SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_CFG = "cfg.json"
SAVED_ARCHITECTURE = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "jumprelu": "jumprelu",
    "gba": "jumprelu",
    "mp": "mp",
}
"""Our architecture -> the SAELens `architecture` it is saved as.  BatchTopK is saved as JumpReLU with its
learned global threshold, GBA as JumpReLU with its adapted thresholds (the paper's bias, negated)."""
LOADED_ARCHITECTURE = {
    "standard": "relu",
    "relu": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "batchtopk",
}
"""A SAELens `architecture` (of an SAE not written by saeatlas) -> the architecture it is loaded as."""


def sae_folder(template: str | Path, hook: str) -> Path:
    """The SAE folder of `hook`: `template` with `{hook}` (the canonical name, e.g. resid_post.3) and / or
    `{layer}` filled in, or else a folder holding one SAE folder per hook, named in any spelling of the hook
    (resid_post.3, blocks.3.hook_resid_post or layers.3, as sparsify saves them).  A pretrained name,
    `saelens:<release>/<sae_id>` or `hf:<owner>/<repo>/<folder>` (templates alike), is the SAE's folder in the
    Hugging Face cache (`pretrained.pretrained_folder`)."""
    from .pretrained import is_pretrained_name, pretrained_folder

    template = str(template)
    hook = canonical_hook(hook)
    if (problem := template_problem(template)) is not None:
        raise SaeAtlasError(
            f"bad SAE folder template {template!r} ({problem}): use {{hook}} and/or {{layer}}, e.g. runs/saes/{{hook}}"
        )
    if is_pretrained_name(template):
        return pretrained_folder(template, hook)
    if "{" in template or "}" in template:
        candidates = [Path(template.format(hook=hook, layer=hook.rsplit(".", 1)[1]))]
    else:
        candidates = [Path(template) / name for name in hook_spellings(hook)]
    for path in candidates:
        if path.is_dir():
            return path
    raise SaeAtlasError(
        f"no SAE for {hook}: '{candidates[0]}' does not exist (give a folder template with "
        "{hook} or {layer}, or a folder holding one SAE folder per hook)"
    )


def resolve_sae(spec: str | Path, hook: str | None = None) -> Path:
    """The local folder of one SAE: a folder path as given, or a pretrained name (`saelens:` / `hf:`) through the
    Hugging Face cache.  A name of one SAE (`saelens:<release>/<sae_id>`, `hf:<owner>/<repo>/<folder>`) is read
    as it is; a template ({hook} / {layer} fields) or a whole release / repo (one SAE per hook) is filled from
    `hook`, which it then needs."""
    from .pretrained import is_pretrained_name, names_one_sae, pretrained_exact

    if not is_pretrained_name(spec):
        return Path(spec)
    if names_one_sae(str(spec)):
        return pretrained_exact(str(spec))
    if hook is None:
        raise SaeAtlasError(
            f"SAE name '{spec}' names one SAE per hook (a template or a whole release / repo): give the hook it is "
            "for (--hook)"
        )
    return sae_folder(str(spec), hook)


def save_saelens(
    sae: SparseAutoencoder, folder: str | Path, metadata: dict | None = None, extra: dict | None = None
) -> Path:
    """Write `sae` as a SAELens folder, atomically (a temporary folder renamed at the end); the weights are
    written from the CPU whatever device the SAE is on, so the folder is the same."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with removed_on_failure(tmp):
        arch = SAVED_ARCHITECTURE[sae.cfg.arch]
        tensors = {
            "W_enc": sae.W_enc.detach().float().cpu().contiguous(),
            "W_dec": sae.W_dec.detach().float().cpu().contiguous(),
            "b_enc": sae.b_enc.detach().float().cpu().contiguous(),
            "b_dec": sae.b_dec.detach().float().cpu().contiguous(),
        }
        if arch == "jumprelu":
            threshold = (
                sae.threshold
                if sae.cfg.arch in ("jumprelu", "gba")
                else torch.full((sae.cfg.d_sae,), float(sae.inference_threshold or 0.0))
            )
            tensors["threshold"] = threshold.detach().float().cpu().contiguous()
        _save_file(tensors, tmp / SAELENS_WEIGHTS)
        meta = dict(metadata or {})
        if "hook_name" in meta:
            meta["hook_name"] = transformer_lens_name(meta["hook_name"])
        cfg = {
            "architecture": arch,
            "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": meta,
            "saeatlas": {"sae": sae.cfg.to_dict(), **(extra or {})},
        }
        if arch == "topk":
            cfg["k"] = sae.cfg.k
        write_json_atomic(tmp / SAELENS_CFG, cfg)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def _save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file, its I/O errors raised as OSError with their errno (a full disk stays one)."""
    import re

    from safetensors.torch import save_file

    try:
        save_file(tensors, path)
    except Exception as exc:  # SafetensorError: "... I/O error: No space left on device (os error 28)"
        code = re.search(r"\(os error (\d+)\)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from exc


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load an SAE from a SAELens, sparsify or dictionary_learning folder onto `device` (read on the CPU,
    then moved: the files are the same whatever device wrote them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SaeAtlasError(f"SAE folder '{folder}' does not exist: check the path")
    if (folder / SAELENS_WEIGHTS).is_file():
        return _load_saelens(folder).to(device)
    if (folder / "sae.safetensors").is_file():
        return _load_sparsify(folder).to(device)
    if (folder / "ae.pt").is_file():
        return _load_dictionary_learning(folder).to(device)
    raise SaeAtlasError(
        f"'{folder}' is not an SAE folder: expected {SAELENS_WEIGHTS} (SAELens), sae.safetensors (sparsify) or ae.pt "
        "(dictionary_learning)"
    )


_CFG_FIX = "fix or replace the SAE's config"
_WEIGHTS_FIX = "the SAE's weights are damaged: download or save the SAE again"


def _read_json(path: Path, schema) -> dict:
    return read_checked_json(
        path, schema, f"{path} is missing: an SAE folder needs its config next to the weights", _CFG_FIX
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_safetensors_header(path, _WEIGHTS_FIX)  # a cut or garbled file: one line naming it
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise SaeAtlasError(
            f"{path} is not a valid safetensors file ({str(exc).splitlines()[0]}); pickles are refused"
        ) from None


def _expect(tensors: dict, name: str, shape: tuple[int, ...], where: Path) -> torch.Tensor:
    if name not in tensors:
        raise SaeAtlasError(f"{where} has no tensor '{name}' (it holds {', '.join(sorted(tensors))})")
    t = tensors[name]
    if tuple(t.shape) != shape:
        raise SaeAtlasError(f"{where}: tensor '{name}' has shape {list(t.shape)}, but its config says {list(shape)}")
    if not torch.isfinite(t).all():
        raise SaeAtlasError(f"{where}: tensor '{name}' holds NaN or Inf")
    return t.float()


def _build(cfg: SAEConfig, W_enc, b_enc, W_dec, b_dec, threshold=None) -> SparseAutoencoder:
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
        if threshold is not None:
            if cfg.arch in ("jumprelu", "gba"):
                sae.threshold.copy_(threshold)
            else:
                sae.inference_threshold = float(threshold.mean())
    return sae.eval()


def _saelens_defaults(raw: dict) -> dict:
    """A cfg.json as sae-lens reads it (its `handle_pre_6_0_config`): old names (`hook_point`,
    `activation_fn_str`), `architecture` standard unless a TopK activation names its k, and
    `normalize_activations` false / true as none / expected_average_only_in."""
    raw = {{"hook_point": "hook_name", "activation_fn_str": "activation_fn"}.get(k, k): v for k, v in raw.items()}
    if "architecture" not in raw:
        k = (raw.get("activation_fn_kwargs") or {}).get("k")
        raw["architecture"] = "topk" if raw.get("activation_fn") == "topk" and k is not None else "standard"
        if raw["architecture"] == "topk":
            raw["k"] = k
    if isinstance(raw.get("normalize_activations"), bool):
        raw["normalize_activations"] = "expected_average_only_in" if raw["normalize_activations"] else "none"
    return raw


def _load_saelens(folder: Path) -> SparseAutoencoder:
    raw = _saelens_defaults(_read_json(folder / SAELENS_CFG, SAELensCfg))
    d_in, d_sae, arch_name = raw["d_in"], raw["d_sae"], raw.get("architecture", "standard")
    ours = raw.get("saeatlas", {}).get("sae")
    if ours:
        try:
            cfg = SAEConfig(**pick(SAEConfig, ours))
        except SaeAtlasError as exc:  # a setting out of its range: name the file
            raise SaeAtlasError(f"{folder / SAELENS_CFG}: section 'saeatlas.sae': {exc}") from None
    elif arch_name in LOADED_ARCHITECTURE:
        cfg = SAEConfig(
            arch=LOADED_ARCHITECTURE[arch_name], d_in=d_in, d_sae=d_sae, k=int(raw.get("k") or min(32, d_sae))
        )
    else:
        raise SaeAtlasError(
            f"{folder}: SAELens architecture '{arch_name}' is not supported (use standard, topk, jumprelu)"
        )
    if (cfg.d_in, cfg.d_sae) != (d_in, d_sae):
        raise SaeAtlasError(f"{folder / SAELENS_CFG}: saeatlas section disagrees with d_in/d_sae")
    if raw.get("normalize_activations", "none") not in ("none", None):
        raise SaeAtlasError(
            f"{folder}: normalize_activations={raw['normalize_activations']!r} is not supported; fold it first"
        )
    path = folder / SAELENS_WEIGHTS
    t = _read_safetensors(path)
    W_enc, b_enc = _expect(t, "W_enc", (d_in, d_sae), path), _expect(t, "b_enc", (d_sae,), path)
    W_dec, b_dec = _expect(t, "W_dec", (d_sae, d_in), path), _expect(t, "b_dec", (d_in,), path)
    if "scaling_factor" in t and not torch.all(t["scaling_factor"] == 1):
        raise SaeAtlasError(f"{path}: a finetuning 'scaling_factor' is not supported; fold it into W_dec first")
    if not raw.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ W_enc  # x W_enc + b_enc == (x - b_dec) W_enc + (b_enc + b_dec W_enc)
    if raw.get("rescale_acts_by_decoder_norm", False):
        # SAELens scales pre-activations by each decoder row norm and decodes with unit rows.
        norms = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    threshold = None
    if arch_name == "jumprelu":
        # SAELens computes relu(pre) * (pre > threshold): a negative threshold acts as 0.
        threshold = _expect(t, "threshold", (d_sae,), path).clamp(min=0)
    return _build(cfg, W_enc, b_enc, W_dec, b_dec, threshold)


def _load_sparsify(folder: Path) -> SparseAutoencoder:
    raw = _read_json(folder / "cfg.json", SparsifyCfg)
    path = folder / "sae.safetensors"
    t = _read_safetensors(path)
    if "encoder.weight" not in t or t["encoder.weight"].ndim != 2:
        raise SaeAtlasError(f"{path} has no 2-d 'encoder.weight': not a sparsify SAE")
    d_sae, d_in = t["encoder.weight"].shape
    _agrees(raw, folder / "cfg.json", d_in=d_in, num_latents=d_sae)
    k = raw.get("k", min(32, d_sae))
    if k > d_sae:
        raise SaeAtlasError(f"{folder / 'cfg.json'}: field 'k' = {k}: expected at most d_sae ({d_sae}); {_CFG_FIX}")
    cfg = SAEConfig(arch="topk", d_in=int(d_in), d_sae=int(d_sae), k=k)
    return _build(
        cfg,
        _expect(t, "encoder.weight", (d_sae, d_in), path).T,
        _expect(t, "encoder.bias", (d_sae,), path),
        _expect(t, "W_dec", (d_sae, d_in), path),
        _expect(t, "b_dec", (d_in,), path),
    )


def _load_dictionary_learning(folder: Path) -> SparseAutoencoder:
    path = folder / "ae.pt"
    state = _read_state_dict(path)
    config = _read_json(folder / "config.json", DictionaryLearningConfig) if (folder / "config.json").is_file() else {}
    trainer = config.get("trainer", {})
    if "W_enc" in state:  # JumpReLU dictionary
        if state["W_enc"].ndim != 2:
            raise SaeAtlasError(
                f"{path}: tensor 'W_enc' has shape {list(state['W_enc'].shape)}: expected [d_in, d_sae]"
            )
        d_in, d_sae = state["W_enc"].shape
        cfg = SAEConfig(arch="jumprelu", d_in=int(d_in), d_sae=int(d_sae), k=min(32, int(d_sae)))
        return _build(
            cfg,
            _expect(state, "W_enc", (d_in, d_sae), path),
            _expect(state, "b_enc", (d_sae,), path),
            _expect(state, "W_dec", (d_sae, d_in), path),
            _expect(state, "b_dec", (d_in,), path),
            _expect(state, "threshold", (d_sae,), path),
        )
    if "encoder.weight" not in state:
        raise SaeAtlasError(f"{path} holds keys {', '.join(sorted(state))}: not a dictionary_learning autoencoder")
    if state["encoder.weight"].ndim != 2:
        shape = list(state["encoder.weight"].shape)
        raise SaeAtlasError(f"{path}: tensor 'encoder.weight' has shape {shape}: expected [d_sae, d_in]")
    d_sae, d_in = state["encoder.weight"].shape
    if config:
        _agrees(trainer, folder / "config.json", "trainer.", activation_dim=d_in, dict_size=d_sae)
    bias_key = "b_dec" if "b_dec" in state else "bias"
    if "k" in state or "k" in trainer:
        k = _k_of(state, path) if "k" in state else trainer["k"]
        if not 1 <= k <= d_sae:
            where = f"{path}: tensor 'k'" if "k" in state else f"{folder / 'config.json'}: field 'trainer.k'"
            raise SaeAtlasError(f"{where} = {k}: expected an integer from 1 to d_sae ({d_sae}); {_CFG_FIX}")
        cfg = SAEConfig(arch="topk", d_in=int(d_in), d_sae=int(d_sae), k=k)
    else:
        cfg = SAEConfig(arch="relu", d_in=int(d_in), d_sae=int(d_sae), k=min(32, int(d_sae)))
    return _build(
        cfg,
        _expect(state, "encoder.weight", (d_sae, d_in), path).T,
        _expect(state, "encoder.bias", (d_sae,), path),
        _expect(state, "decoder.weight", (d_in, d_sae), path).T,
        _expect(state, bias_key, (d_in,), path),
    )


def _agrees(raw: dict, path: Path, prefix: str = "", **shape: int) -> None:
    """The config's sizes (`raw[name]`, where given) equal the weights' (`shape[name]`)."""
    for name, actual in shape.items():
        if name in raw and raw[name] != actual:
            raise SaeAtlasError(
                f"{path}: field '{prefix}{name}' = {raw[name]}: expected {int(actual)} (the weights' size); {_CFG_FIX}"
            )


def _k_of(state: dict, path: Path) -> int:
    k = state["k"]
    if k.numel() != 1 or k.is_floating_point() or k.dtype == torch.bool:
        raise SaeAtlasError(f"{path}: tensor 'k' is {k.dtype} {list(k.shape)}: expected one integer")
    return int(k)


def torch_load_safely(path: Path, fix: str):
    """What the torch file `path` holds, read with weights_only=True (tensors, numbers, lists, dicts).  An unsafe
    pickle is refused in one line (without torch's advice to load it unsafely, nor its warnings), a damaged
    archive says so; both end with `fix`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says it all
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise SaeAtlasError(
            f"{path} holds pickled Python objects, not only tensors: refused, since loading them could run code; {fix}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, KeyError) as exc:
        # RuntimeError / EOFError for corrupt or truncated archives
        raise SaeAtlasError(
            f"{path} is damaged or truncated ({type(exc).__name__}: {str(exc).splitlines()[0][:80]}): {fix}"
        ) from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A dictionary_learning ae.pt: a dict of tensors (`torch_load_safely`)."""
    state = torch_load_safely(
        path, "save the SAE as a plain state dict of tensors (torch.save(ae.state_dict(), ...)), or download it again"
    )
    if not isinstance(state, dict):
        raise SaeAtlasError(f"{path} holds a {type(state).__name__}, not a state dict (names -> tensors)")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise SaeAtlasError(
                f"{path}: entry {name!r} is a {type(value).__name__}: expected a tensor (a state dict holds only "
                "tensors); save ae.state_dict()"
            )
    return state


def read_metadata(folder: str | Path) -> dict:
    """The `metadata` of a SAELens folder (hook in saeatlas naming); {} for other layouts."""
    path = Path(folder) / SAELENS_CFG
    if not (Path(folder) / SAELENS_WEIGHTS).is_file():
        return {}
    raw = _saelens_defaults(_read_json(path, SAELensCfg))
    meta = dict(raw.get("metadata") or {})
    if raw.get("hook_name") and not meta.get("hook_name"):  # a cfg.json older than SAELens 6 says it at the top
        meta["hook_name"] = raw["hook_name"]
    if meta.get("hook_name"):
        meta["hook_name"] = _our_hook_name(meta["hook_name"])
    return meta


def _our_hook_name(name: str) -> str:
    """A cfg.json's hook name in saeatlas's spelling; a name saeatlas cannot read (another library's hook,
    e.g. `blocks.3.ln1.hook_normalized`) stays as it is."""
    try:
        return canonical_hook(name)
    except SaeAtlasError:
        return name
