"""What a finished study holds for the explorer: its comparisons (every layer pair and control), their matched
pairs, concept membership and absorption roles, and where each side's store and SAE live.

Everything comes from the study's results.json (read once, when the explorer opens); activations and SAEs are
read later, on demand (`explore.latents`).  A comparison is named by its id, its place in `comparisons`:
for each layer pair of the comparison the real SAEs ("sae") then its controls in results order, then the
skyline entries.  Requests name comparisons and latents by these ids, never by paths.

Paths: the study records absolute paths.  One inside the folder the study was written to (its stores are
OUT/stores/<label>) is taken relative to the folder being explored (a study moved or copied still opens); any
other (a pretrained SAE folder, a store given from outside) is allowed exactly as results.json names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import SaeAtlasError
from ..fileio import read_json
from ..schema import checked_results

CONTROL_KINDS = ("random_init", "neurons", "shifted")
"""Controls of a layer pair, in the order the explorer lists them after the real SAEs."""
BROWSABLE = ("sae", *CONTROL_KINDS, "skyline")
"""Comparisons whose latents the explorer shows: every kind (random_init's SAE is rebuilt from the comparison's
config, neurons are the store's raw activations)."""
SIDE_KINDS = ("sae", "random_init", "neurons")
"""What a side's latents are: a stored SAE's, the random_init control's rebuilt SAE's, or raw neurons."""
REPORT_PORT = 8765
"""The explorer's default port, the one the static report's pair cards link to."""
ROLES = ("main", "split", "absorber")
"""Absorption roles of a latent for a letter: its only main latent, one of several (split), or an absorber."""


@dataclass(frozen=True)
class SideSpec:
    """One side of a comparison: a model's store and SAE at a hook.

    kind (SIDE_KINDS): "sae" (the SAE in folder `sae`), "random_init" (the control's random SAE of the
    architecture of the SAE in `sae`, rebuilt as the comparison built it) or "neurons" (the store's raw
    activations at `hook`; `sae` is None).  `model` is "a" or "b": which model of the comparison it reads."""

    label: str
    store: Path
    sae: Path | None
    hook: str
    kind: str = "sae"
    model: str = "a"


def comparison_list(results: dict) -> list[dict]:
    """[{id, kind, hook_a, hook_b, entry}] of a study results dict, in id order (see the module docstring);
    `entry` is the COMPARISON dict of results.json.  Pure: the report uses it to name a pair's view."""
    compare = results.get("compare") or {}
    out = []
    for layer in compare.get("pairs") or []:
        for kind in ("sae", *CONTROL_KINDS):
            if isinstance(layer.get(kind), dict):
                out.append({"kind": kind, "hook_a": layer["hook_a"], "hook_b": layer["hook_b"], "entry": layer[kind]})
    for sky in compare.get("skyline") or []:
        if isinstance(sky.get("skyline"), dict):
            out.append({"kind": "skyline", "hook_a": sky["hook_a"], "hook_b": sky["hook_b"], "entry": sky["skyline"]})
    for i, c in enumerate(out):
        c["id"] = i
    return out


def pair_fragment(results: dict, hook_a: str, hook_b: str, idx_a: int, idx_b: int) -> str | None:
    """The explorer's URL fragment of the real-SAE pair (idx_a, idx_b) at (hook_a, hook_b), or None."""
    if not isinstance(idx_a, int) or not isinstance(idx_b, int):
        return None
    for c in comparison_list(results):
        if c["kind"] == "sae" and (c["hook_a"], c["hook_b"]) == (hook_a, hook_b):
            return f"view=pair&c={c['id']}&a={idx_a}&b={idx_b}"
    return None


class StudyIndex:
    """A finished study's comparisons and pairs, read from OUT/results.json (read-only)."""

    def __init__(self, out: str | Path):
        self.out = Path(out).resolve()
        if not self.out.is_dir():
            raise SaeAtlasError(f"'{out}' is not a folder: give the output folder of `saeatlas run`")
        source = self.out / "results.json"
        results = read_json(
            source,
            f"no results.json in '{out}': it is not a finished study; run `saeatlas run` to finish it",
            "run `saeatlas run` again to rewrite it",
        )
        if not isinstance(results, dict) or results.get("kind") != "study":
            raise SaeAtlasError(f"{source} is not a study's results: give the output folder of `saeatlas run`")
        checked_results(results, "study", source, "run `saeatlas run` again to rewrite it")
        if not isinstance(results.get("compare"), dict):
            raise SaeAtlasError(f"the study in '{out}' has no comparison to explore: add [compare] and run it")
        self.results = results
        self.comparisons = comparison_list(results)
        self._recorded_out = _recorded_out(results)
        self._allowed = self._outside_paths()
        self._pairs: dict[int, list[dict]] = {}

    # ------------------------------------------------------------ facts
    @property
    def name(self) -> str:
        return str((self.results.get("study") or {}).get("name") or self.out.name)

    @cached_property
    def labels(self) -> tuple[str, str]:
        cfg = self.results["compare"]["config"]
        study_compare = (self.results.get("study") or {}).get("compare") or {}
        return (
            str(study_compare.get("label_a") or cfg.get("label_a") or "A"),
            str(study_compare.get("label_b") or cfg.get("label_b") or "B"),
        )

    def comparison(self, cid: int) -> dict:
        """The comparison with id `cid`; KeyError if there is none."""
        if not 0 <= cid < len(self.comparisons):
            raise KeyError(cid)
        return self.comparisons[cid]

    def summary(self) -> dict:
        """What the page needs first: names, comparisons (without their pairs), concepts, letters."""
        return {
            "name": self.name,
            "labels": list(self.labels),
            "comparisons": [
                {
                    "id": c["id"],
                    "kind": c["kind"],
                    "hook_a": c["hook_a"],
                    "hook_b": c["hook_b"],
                    "n_pairs": len((c["entry"].get("pairs") or {}).get("idx_a") or []),
                    "browsable": c["kind"] in BROWSABLE,
                    "side_labels": [s.label for s in self.sides(c["id"])] if c["kind"] in BROWSABLE else None,
                }
                for c in self.comparisons
            ],
            "concepts": sorted({e["concept"] for e in self._concept_entries}),
            "letters": sorted({letter for roles in self._roles.values() for _, letter in roles}),
            "roles": list(ROLES),
        }

    # ------------------------------------------------------------ pairs
    def pairs(self, cid: int) -> list[dict]:
        """Matched pairs of comparison `cid`, strongest first: {c, rank (1 = highest corr), idx_a, idx_b, corr,
        concepts, roles_a, roles_b} (built on first use, then kept)."""
        if cid not in self._pairs:
            self._pairs[cid] = self._build_pairs(cid)
        return self._pairs[cid]

    def _build_pairs(self, cid: int) -> list[dict]:
        c = self.comparison(cid)
        p = c["entry"].get("pairs") or {}
        corr = np.asarray([np.nan if v is None else v for v in p.get("corr", [])], dtype=float)
        order = np.argsort(-np.nan_to_num(corr, nan=-np.inf), kind="stable")
        concepts = self._concepts_of(c) if c["kind"] == "sae" else ({}, {})
        roles = [self._roles_of(s) for s in self.sides(cid)] if c["kind"] in BROWSABLE else [{}, {}]
        out = []
        for rank, i in enumerate(order, start=1):
            a, b = int(p["idx_a"][i]), int(p["idx_b"][i])
            names = sorted(set(concepts[0].get(a, ())) | set(concepts[1].get(b, ())))
            value = None if np.isnan(corr[i]) else float(corr[i])
            out.append(
                {
                    "c": cid,
                    "rank": rank,
                    "idx_a": a,
                    "idx_b": b,
                    "corr": value,
                    "concepts": names,
                    "roles_a": roles[0].get(a, []),
                    "roles_b": roles[1].get(b, []),
                }
            )
        return out

    def pair(self, cid: int, idx_a: int, idx_b: int) -> dict | None:
        """The pair (idx_a, idx_b) of comparison `cid`, or None when it is not one of its matched pairs."""
        return next((p for p in self.pairs(cid) if p["idx_a"] == idx_a and p["idx_b"] == idx_b), None)

    def partners(self, cid: int, side: str, idx: int) -> list[dict]:
        """The latents matched with latent `idx` of `side` in comparison `cid`: [{idx, corr, rank}]."""
        other = "b" if side == "a" else "a"
        return [
            {"idx": p[f"idx_{other}"], "corr": p["corr"], "rank": p["rank"]}
            for p in self.pairs(cid)
            if p[f"idx_{side}"] == idx
        ]

    # ------------------------------------------------------------ sides and paths
    def sides(self, cid: int) -> tuple[SideSpec, SideSpec]:
        """The (A, B) sides of a browsable comparison; KeyError for one whose latents are not stored."""
        c = self.comparison(cid)
        if c["kind"] not in BROWSABLE:
            raise KeyError(cid)
        cfg = self.results["compare"]["config"]
        la, lb = self.labels
        ha, hb = c["hook_a"], c["hook_b"]
        store_a, store_b = self.path(cfg["store_a"]), self.path(cfg["store_b"])
        if c["kind"] == "neurons":
            return (
                SideSpec(la, store_a, None, ha, "neurons", "a"),
                SideSpec(lb, store_b, None, hb, "neurons", "b"),
            )
        a = SideSpec(la, store_a, self._sae(cfg["saes_a"], ha, la), ha)
        if c["kind"] == "skyline":
            seed = ((self.results.get("study") or {}).get("compare") or {}).get("skyline_seed")
            sky = self._sae(cfg["skyline_saes_a"], ha, la)
            return a, SideSpec(f"{la} seed {seed}" if seed is not None else f"{la} skyline", store_a, sky, ha)
        sae_b = self._sae(cfg["saes_b"], hb, lb)
        if c["kind"] == "random_init":
            return a, SideSpec(f"{lb} random-init SAE (control)", store_b, sae_b, hb, "random_init", "b")
        return a, SideSpec(lb, store_b, sae_b, hb, model="b")

    def shift(self, cid: int) -> int:
        """The token shift of comparison `cid`'s alignment: 1 for the shifted control (`align_stores(shift=1)`), else 0."""
        return 1 if self.comparison(cid)["kind"] == "shifted" else 0

    def compare_config(self):
        """The comparison's `CompareConfig` as results.json records it, its stores and SAE templates read from the
        explored folder (see `path`), on the CPU: what rebuilds the random_init control's SAE."""
        from ..compare.config import CompareConfig
        from ..config import pick

        cfg = dict(self.results["compare"]["config"])
        for key in ("store_a", "store_b"):
            cfg[key] = str(self.path(cfg[key]))
        for key in ("saes_a", "saes_b", "skyline_saes_a"):
            if isinstance(cfg.get(key), str):
                cfg[key] = self._reroot(cfg[key])
        return CompareConfig(**pick(CompareConfig, cfg), device="cpu")

    def path(self, recorded: str | Path) -> Path:
        """A path results.json records, as the explorer may open it (see the module docstring); SaeAtlasError
        for one that is neither inside the study nor one of the outside folders results.json names."""
        p = Path(self._reroot(str(recorded))).resolve()
        if _inside(p, self.out) or any(_inside(p, allowed) for allowed in self._allowed):
            return p
        raise SaeAtlasError(f"results.json names '{recorded}', outside the study's folder: it is not opened")

    def _sae(self, template: str, hook: str, label: str) -> Path:
        """The SAE folder of model `label` at `hook`: for a pretrained name (saelens: / hf:), the folder the study
        resolved it to (results.json's `saes`; no hub, no sae-lens needed), else the folder template filled."""
        from ..sae.formats import sae_folder
        from ..sae.pretrained import is_pretrained_name

        if is_pretrained_name(template):
            for entry in self.results.get("saes") or []:
                if entry.get("label") == label and entry.get("hook") == hook and entry.get("role") == "pretrained":
                    return self.path(entry["folder"])
        return self.path(sae_folder(self._reroot(template), hook))

    def _reroot(self, raw: str) -> str:
        """`raw` (a path or a folder template) with the study's recorded out replaced by the explored folder."""
        if self._recorded_out is not None:
            root = str(self._recorded_out)
            if raw == root or raw.startswith(root + "/"):
                return str(self.out) + raw[len(root) :]
        return raw

    def _outside_paths(self) -> list[Path]:
        """Folders outside the study that results.json itself names as inputs: stores and SAE folders."""
        from ..sae.pretrained import is_pretrained_name

        cfg = self.results["compare"].get("config") or {}
        named = [cfg.get("store_a"), cfg.get("store_b")]
        named += [s.get("folder") for s in self.results.get("saes") or []]
        for key in ("saes_a", "saes_b", "skyline_saes_a"):
            if isinstance(cfg.get(key), str) and not is_pretrained_name(cfg[key]):
                named.append(cfg[key].split("{", 1)[0])
        inside = [self.out] + ([self._recorded_out] if self._recorded_out else [])
        paths = [Path(n).resolve() for n in named if isinstance(n, str) and n]
        return [p for p in paths if not any(_inside(p, root) for root in inside)]

    # ------------------------------------------------------------ concepts and absorption
    @cached_property
    def _concept_entries(self) -> list[dict]:
        return list((self.results.get("concepts") or {}).get("entries") or [])

    def _concepts_of(self, c: dict) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
        """latent -> concepts it belongs to, for each side of a layer pair (a concept's matched latents)."""
        sides: tuple[dict, dict] = ({}, {})
        for e in self._concept_entries:
            if (e.get("hook_a"), e.get("hook_b")) != (c["hook_a"], c["hook_b"]):
                continue
            for side, key in ((0, "latents_a"), (1, "latents_b")):
                for i in e.get(key) or []:
                    sides[side].setdefault(int(i), []).append(e["concept"])
        return sides

    @cached_property
    def _roles(self) -> dict[tuple[Path, int], list[tuple[str, str]]]:
        """(SAE folder, latent) -> [(role, letter)] from the absorption results."""
        out: dict[tuple[Path, int], list[tuple[str, str]]] = {}
        for sae in (self.results.get("absorption") or {}).get("saes") or []:
            try:
                folder = self.path(sae["folder"])
            except SaeAtlasError:
                continue
            for letter in sae.get("letters") or []:
                main = [int(i) for i in letter.get("main_latents") or []]
                for i in main:
                    out.setdefault((folder, i), []).append(("main" if len(main) == 1 else "split", letter["letter"]))
                for absorber in letter.get("absorbing_latents") or []:
                    out.setdefault((folder, int(absorber["latent"])), []).append(("absorber", letter["letter"]))
        return out

    def _roles_of(self, side: SideSpec) -> dict[int, list[dict]]:
        if side.kind != "sae":  # absorption scored the stored SAEs only
            return {}
        return {
            i: [{"role": r, "letter": letter} for r, letter in roles]
            for (folder, i), roles in self._roles.items()
            if folder == side.sae
        }


def _recorded_out(results: dict) -> Path | None:
    """The folder the study was written to: its stores are OUT/stores/<label> (None when they are not)."""
    store = Path(str(results["compare"].get("config", {}).get("store_a", "")))
    return store.parent.parent if store.parent.name == "stores" and store.is_absolute() else None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
