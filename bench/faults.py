"""The fault sweep, as a hostile and clumsy user would run saeatlas: the table kept in the README.

    .venv/bin/python bench/faults.py [--kills 4] [--races 3] [--jobs 2] [--only inputs,kills,races,disk,pickle,escape]

- inputs: every case of tests/faults.py (each file kind broken field by field from its schema, bytes cut or not
  UTF-8; every numeric flag of every verb; every study key; the study shapes people get wrong), each in a fresh
  `python -m saeatlas` process: does it exit 2 with one line on stderr (no traceback, log line or warning) and
  leave its folder as it was?
- kills: extract, train and run killed (SIGKILL, SIGINT, SIGTERM in turn) at a random moment, then rerun: is
  the product identical to an uninterrupted run's (bytes; JSON documents without their timings)?
- races: two identical extracts / trains into one folder at once: does exactly one finish, the other stop
  with one line naming the holder's pid, and the product match a solo run?
- disk: extract and train onto a small tmpfs (needs root; skipped otherwise): one line, no temporary files,
  and after freeing space the rerun matches a solo run?
- pickle: pickled payloads where saeatlas reads tensors (ae.pt, .npy, checkpoint.pt): refused, never run?
- escape: a study whose labels and texts hold markup: does report.html carry any of it unescaped?
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import saeatlas  # noqa: F401 - before torch (tests/helpers.py loads it): torch's threads then wait passively

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import faults
from helpers import HOOK

CLI = [sys.executable, "-m", "saeatlas"]
TIMING_KEYS = ("seconds", "tokens_per_second", "seconds_when_made", "report", "results", "key")
"""Keys of the JSON documents that hold times, or paths and stage keys (which hash the output folder)."""


def _env(root: Path) -> dict:
    return dict(os.environ, SAEATLAS_CACHE=str(root / "cache"), HF_HUB_OFFLINE="1")


# ---------------------------------------------------------------- bad inputs
def bad_inputs(ws: dict, root: Path, jobs: int) -> list[faults.Outcome]:
    """Every case in its own `python -m saeatlas` process, `jobs` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    cases = faults.all_cases(ws, study_verbs=("status", "run"))
    done = []

    def one(i: int) -> faults.Outcome:
        outcome = faults.run_subprocess(cases[i], root / f"case{i}", env=_env(root))
        done.append(i)
        print(f"\r  {len(done)}/{len(cases)} cases", end="", file=sys.stderr, flush=True)
        return outcome

    with ThreadPoolExecutor(jobs) as pool:
        outcomes = list(pool.map(one, range(len(cases))))
    print(file=sys.stderr)
    return outcomes


def print_inputs(outcomes: list[faults.Outcome]) -> None:
    rows = Counter((o.case.kind, o.case.verb) for o in outcomes)
    good = Counter((o.case.kind, o.case.verb) for o in outcomes if o.verdict == "ok")
    print("\n| what is broken | verb | tried | one line, exit 2, nothing left |")
    print("|---|---|---:|---:|")
    for (kind, verb), n in sorted(rows.items()):
        print(f"| {kind} | {verb} | {n} | {good[kind, verb]} |")
    total, ok = len(outcomes), sum(o.verdict == "ok" for o in outcomes)
    print(f"| **all** | | **{total}** | **{ok}** |")
    for o in outcomes:
        if o.verdict != "ok":
            print(f"  FAIL {o.case.kind} / {o.case.verb} / {o.case.name}: {o.verdict}: {o.stderr[-1:]} {o.left[:3]}")


# ---------------------------------------------------------------- kills
def digest(folder: Path) -> dict[str, object]:
    """A product's content: file bytes, JSON documents without their timings and with the run's own folder
    written <here> (two runs into two folders are compared); run logs, reports, stage records and lock files
    left out (they hold times)."""
    out: dict[str, object] = {}
    here = str(folder.parent)
    for p in sorted(folder.rglob("*")):
        name = p.name
        if not p.is_file() or name in ("run.log", "report.html") or name.endswith((".stage.json", ".lock")):
            continue
        if p.suffix in (".json", ".toml"):
            text = p.read_text().replace(here, "<here>")
            out[str(p.relative_to(folder))] = _untimed(json.loads(text)) if p.suffix == ".json" else text
        else:
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


def _untimed(doc):
    if isinstance(doc, dict):
        return {
            k: _untimed(v)
            for k, v in doc.items()
            if k not in TIMING_KEYS and "seconds" not in k and not (k == "state" and v in ("done", "ran"))
        }
    if isinstance(doc, list):
        return [_untimed(v) for v in doc]
    return doc


def kill_commands(ws: dict) -> dict[str, callable]:
    """verb -> (out folder -> the command making a product there, and the folder to compare)."""
    extract = ["extract", "--model", str(ws["model"]), "--corpus", str(ws["corpus"]), "--hooks", "1,2"]
    extract += ["--split", "all", "--tokens", "1500", "--context", "16", "--shard-windows", "1", "--batch-size", "1"]
    extract += ["--store-dtype", "float32"]
    train = ["train", "--store", str(ws["store"]), "--hook", HOOK, "--arch", "jumprelu", "--d-sae", "64"]
    train += ["--k", "4", "--steps", "2000", "--batch-size", "64", "--checkpoint-every", "50", "--quiet"]
    return {
        "extract": lambda out: ([*extract, "--quiet", "--out", str(out)], out),
        "train": lambda out: ([*train, "--out", str(out)], out),
        "run": lambda out: (["run", str(_kill_study(ws, out)), "--quiet"], out / "s"),
    }


def _kill_study(ws: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    text = faults.study_text(ws).replace(f'out = "{ws["root"] / "study-out"}"', f'out = "{out / "s"}"')
    (out / "study.toml").write_text(text.replace("steps = 5", "steps = 200"))
    return out / "study.toml"


def kills(ws: dict, root: Path, n: int, rng: random.Random) -> list[tuple[str, str, float, bool]]:
    """(verb, signal, at seconds, identical after the rerun) for `n` kills of each verb."""
    results = []
    for verb, make in kill_commands(ws).items():
        argv, product = make(root / f"{verb}-ref")
        started = time.perf_counter()
        subprocess.run([*CLI, *argv], check=True, env=_env(root), capture_output=True)
        solo = time.perf_counter() - started
        reference = digest(product)
        for i in range(n):
            sig = (signal.SIGKILL, signal.SIGINT, signal.SIGTERM)[i % 3]
            argv, product = make(root / f"{verb}-kill{i}")
            at = rng.uniform(0.2, 0.95) * solo
            proc = subprocess.Popen([*CLI, *argv], env=_env(root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(at)
            proc.send_signal(sig)
            proc.wait()
            rerun = subprocess.run([*CLI, *argv], check=False, env=_env(root), capture_output=True, text=True)
            now = digest(product)
            same = rerun.returncode == 0 and now == reference
            results.append((verb, sig.name, at, same))
            differ = sorted(k for k in set(now) | set(reference) if now.get(k) != reference.get(k))
            print(f"  {verb} {sig.name} at {at:.1f} s of {solo:.1f}: {'identical' if same else f'DIFFERENT {differ}'}")
    return results


# ---------------------------------------------------------------- races
def races(ws: dict, root: Path, n: int) -> list[tuple[str, str]]:
    """(verb, outcome) of `n` races of two identical writers per verb."""
    results = []
    for verb, make in list(kill_commands(ws).items())[:2]:
        argv, product = make(root / f"{verb}-solo")
        subprocess.run([*CLI, *argv], check=True, env=_env(root), capture_output=True)
        reference = digest(product)
        for i in range(n):
            argv, product = make(root / f"{verb}-race{i}")
            procs = [
                subprocess.Popen([*CLI, *argv], env=_env(root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for _ in range(2)
            ]
            codes = [p.wait() for p in procs]
            errs = [p.stderr.read().decode().strip().splitlines() for p in procs]
            loser = [e for c, e in zip(codes, errs, strict=True) if c != 0]
            one_line = all(len(e) == 1 and "pid" in e[0] for e in loser)
            same = digest(product) == reference
            outcome = (
                f"exits {sorted(codes)}, loser {'one line with the pid' if one_line else errs}, "
                f"product {'identical' if same else 'DIFFERENT'}"
            )
            ok = sorted(codes) in ([0, 0], [0, 2]) and one_line and same
            results.append((verb, "ok" if ok else outcome))
            print(f"  {verb} race {i}: {outcome}")
    return results


# ---------------------------------------------------------------- full disk
def full_disk(ws: dict, root: Path, free_kb: int = 48) -> list[tuple[str, str]]:
    """Extract and train onto a tmpfs that is `free_kb` KB short of full before they start, or that fills up
    once their first shard or checkpoint is written; then free it and rerun: (case, outcome)."""
    mount = root / "small-disk"
    mount.mkdir(parents=True)
    command = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)]
    if subprocess.run(command, check=False, capture_output=True).returncode:
        return [("disk", "skipped: cannot mount a tmpfs here (needs root)")]
    results = []
    try:
        for verb, make in list(kill_commands(ws).items())[:2]:
            argv, product = make(root / f"{verb}-disk-ref")
            subprocess.run([*CLI, *argv], check=True, env=_env(root), capture_output=True)
            reference = digest(product)
            for when in ("before it starts", "while it runs"):
                argv, product = make(mount / verb)
                filler = mount / "filler"
                proc = _fill_disk(argv, product, filler, free_kb, root, mid_run=when == "while it runs")
                err = [line for line in proc.stderr.splitlines() if line.strip()]
                temps = [p.name for p in mount.rglob("*") if ".tmp-" in p.name]
                filler.unlink()
                rerun = subprocess.run([*CLI, *argv], check=False, env=_env(root), capture_output=True, text=True)
                same = rerun.returncode == 0 and digest(product) == reference
                ok = proc.returncode == 2 and len(err) == 1 and not temps and same
                outcome = "ok" if ok else f"exit {proc.returncode}, {err[-2:]}, temporary files {temps}, same {same}"
                results.append((f"{verb}, disk full {when}", outcome))
                print(f"  {verb}, disk full {when}: {err[-1] if err else ''} -> {outcome}")
                shutil.rmtree(product, ignore_errors=True)
                shutil.rmtree(product.with_name(product.name + ".partial"), ignore_errors=True)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    return results


def _fill_disk(argv, product: Path, filler: Path, free_kb: int, root: Path, mid_run: bool):
    """Run `argv` with the disk filled to `free_kb` KB short of full: at once, or once the product's first
    shard or checkpoint is on disk."""
    if not mid_run:
        filler.write_bytes(b"\0" * (shutil.disk_usage(filler.parent).free - free_kb * 1024))
        return subprocess.run([*CLI, *argv], check=False, env=_env(root), capture_output=True, text=True)
    proc = subprocess.Popen([*CLI, *argv], env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = ("shard-00000.npy", "checkpoint.pt")
    while proc.poll() is None and not any(p.name in first for p in filler.parent.rglob("*")):
        time.sleep(0.01)
    with open(filler, "wb", buffering=0) as fh:  # every byte left, in blocks, while the writer goes on
        try:
            while fh.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    out, err = proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# ---------------------------------------------------------------- pickles and escaping
PAYLOAD = "import pathlib; pathlib.Path({marker!r}).write_text('ran')"


def pickles(ws: dict, root: Path) -> list[tuple[str, str]]:
    """Pickled payloads where saeatlas reads tensors; each would write a marker file if it ran."""

    class Evil:
        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):
            return (exec, (PAYLOAD.format(marker=self.marker),))

    results = []
    places = {
        "dictionary_learning ae.pt": lambda d, e: (_dl_with(ws, d, e), ["eval", str(d / "dl"), "--activations"]),
        "activations .npy": lambda d, e: (_npy_with(d, e), ["train", "--activations", str(d / "x.npy")]),
        "train checkpoint.pt": lambda d, e: (_checkpoint_with(ws, d, e), ["train", *_checkpoint_args(ws, d)]),
    }
    for name, make in places.items():
        case = root / f"pickle-{name.split()[-1]}"
        case.mkdir(parents=True)
        marker = case / "PWNED"
        _, argv = make(case, Evil(str(marker)))
        if argv[-1] == "--activations":
            argv.append(str(ws["acts"]))
        if argv[0] == "train" and "--out" not in argv:
            argv += [*faults.SAE_ARGS, "--out", str(case / "out")]
        before = faults.listing(case)
        proc = subprocess.run([*CLI, *argv], check=False, env=_env(root), capture_output=True, text=True)
        err = [line for line in proc.stderr.splitlines() if line.strip()]
        left = [p for p in faults.listing(case) if p not in before]
        ok = proc.returncode == 2 and not marker.exists() and len(err) == 1 and "weights_only=False" not in err[0]
        ok = ok and not left
        outcome = "ok" if ok else f"exit {proc.returncode}, ran {marker.exists()}, {err[-2:]}"
        results.append((name, outcome))
        print(f"  {name}: {err[-1] if err else ''} -> {outcome}")
    return results


def _dl_with(ws, case: Path, evil) -> None:
    import pickle

    shutil.copytree(ws["dictionary_learning"], case / "dl")
    (case / "dl" / "ae.pt").write_bytes(pickle.dumps({"encoder.weight": evil}))


def _npy_with(case: Path, evil) -> None:
    import numpy as np

    np.save(case / "x.npy", np.array([evil], dtype=object), allow_pickle=True)


def _checkpoint_args(ws, case: Path) -> list[str]:
    args = ["--store", str(ws["store"]), "--hook", HOOK, *faults.SAE_ARGS, "--out", str(case / "out")]
    args[args.index("--steps") + 1] = "100000"
    return [*args, "--checkpoint-every", "10"]


def _checkpoint_with(ws, case: Path, evil) -> None:
    """A real unfinished run (killed after its first checkpoint), whose checkpoint becomes the payload."""
    import pickle

    checkpoint = case / "out.partial" / "checkpoint.pt"
    proc = subprocess.Popen([*CLI, "train", *_checkpoint_args(ws, case)], stderr=subprocess.DEVNULL)
    while not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    checkpoint.write_bytes(pickle.dumps({"sae": evil}))


def escaping(root: Path) -> list[tuple[str, str]]:
    """Render the report of a study whose every string holds markup; look for any of it unescaped."""
    from saeatlas.report.html import render_report

    payloads = ['<script>alert("x")</script>', '<img src=x onerror="alert(1)">', "</style><svg onload=alert(1)>"]
    results = []
    for payload in payloads:
        doc = json.loads((root / "ws" / "results" / "results.json").read_text())
        doc["study"]["name"] = payload
        for m in doc["study"]["models"]:
            m["label"] = payload
        html = render_report(doc)
        leaked = payload in html
        results.append((payload, "ok" if not leaked else "LEAKED"))
        print(f"  {payload!r}: {'escaped' if not leaked else 'LEAKED'}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=4, help="kills per verb")
    parser.add_argument("--races", type=int, default=3, help="races per verb")
    parser.add_argument("--only", default="inputs,kills,races,disk,pickle,escape")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="bad-input cases run side by side")
    args = parser.parse_args()
    only = set(args.only.split(","))
    root = Path(tempfile.mkdtemp(prefix="saeatlas-faults-"))
    os.environ["SAEATLAS_CACHE"] = str(root / "cache")
    ws = faults.build_workspace(root / "ws")
    summary = []
    if "inputs" in only:
        outcomes = bad_inputs(ws, root / "inputs", args.jobs)
        print_inputs(outcomes)
        summary.append(("bad inputs", len(outcomes), sum(o.verdict == "ok" for o in outcomes)))
    if "kills" in only:
        done = kills(ws, root / "kills", args.kills, random.Random(args.seed))
        for verb in ("extract", "train", "run"):
            mine = [r for r in done if r[0] == verb]
            summary.append(
                (f"kills of {verb} (SIGKILL/SIGINT/SIGTERM), rerun identical", len(mine), sum(r[3] for r in mine))
            )
    if "races" in only:
        done = races(ws, root / "races", args.races)
        summary.append(
            (
                "races of two writers (one stops with the pid, product identical)",
                len(done),
                sum(r[1] == "ok" for r in done),
            )
        )
    if "disk" in only:
        done = full_disk(ws, root / "disk")
        summary.append(
            ("full disk (one line, no temporary files, rerun identical)", len(done), sum(r[1] == "ok" for r in done))
        )
    if "pickle" in only:
        done = pickles(ws, root / "pickle")
        summary.append(("pickled payloads refused, never run", len(done), sum(r[1] == "ok" for r in done)))
    if "escape" in only:
        done = escaping(root)
        summary.append(("markup in every report string, escaped", len(done), sum(r[1] == "ok" for r in done)))
    print("\n| check | tried | held |")
    print("|---|---:|---:|")
    for what, n, ok in summary:
        print(f"| {what} | {n} | {ok} |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
