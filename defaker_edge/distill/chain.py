"""The retention chain: how much of the teacher each compression step keeps, on the held-out set.

`chain_report(ChainConfig) -> ChainReport`. Every stage (the teacher first, then e.g. the distilled
and pruned student, the recovered one, the INT8 package) is a held-out score file in one format
(`distill.program.heldout_scores`: per image its key, label, domain, kind, fake probability and pixel
scores; `defaker eval --scores-out` writes the same from a package's predictions), all on the same
images. The report gives, per stage and per domain: image AUC with its bootstrap interval, the
paired AUC difference to the teacher with its interval (the same resampled images for both), pixel
F1 at the stage's cut, best-cut F1, and retention (stage / teacher); plus size and cost where a stage
names its student dir (parameters, GMAC per tile) or a latency (ms per 1024² image, measured
elsewhere, with its machine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import utc_now, write_json
from ..errors import ArtifactError, DefakerError
from ..metrics import bootstrap_auc


@dataclass
class Stage:
    name: str
    scores: str  # held-out score file
    model: str | None = None  # student dir (params, GMAC per tile)
    ms_1024: float | None = None  # ms per 1024² image, measured elsewhere
    note: str = ""


@dataclass
class ChainConfig:
    stages: list[Stage]  # the teacher first
    out: str | None = None
    markdown: str | None = None
    reps: int = 2000
    seed: int = 0
    machine: str | None = None  # where the latencies were measured


@dataclass
class ChainReport:
    report: dict[str, Any]
    markdown: str = ""
    paths: list[Path] = field(default_factory=list)


def parse_stage(spec: str) -> Stage:
    """NAME=SCORES[,model=DIR][,ms=X][,note=TEXT] (the CLI's --stage)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise DefakerError(f"--stage {spec!r}: expected NAME=SCORES[,model=DIR][,ms=X][,note=TEXT]")
    parts = rest.split(",")
    st = Stage(name=name, scores=parts[0])
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k == "model":
            st.model = v
        elif k == "ms":
            try:
                st.ms_1024 = float(v)
            except ValueError:
                raise DefakerError(f"--stage {spec!r}: ms must be a number, got {v!r}") from None
        elif k == "note":
            st.note = v
        else:
            raise DefakerError(f"--stage {spec!r}: unknown field {k!r} (model, ms, note)")
    return st


def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: no held-out score file")
    d = json.loads(p.read_text())
    if not isinstance(d, dict) or not isinstance(d.get("images"), list):
        raise ArtifactError(f"{p}: not a held-out score file (no 'images' list)")
    return d


def _size(model_dir: str | None) -> dict[str, Any]:
    if not model_dir:
        return {}
    from ..student.flops import count_flops
    from ..student.io import load_student

    model, cfg = load_student(model_dir)
    f = count_flops(model, cfg.tile)
    return {"params": int(f["params"]), "gmac_per_tile": round(f["macs"] / 1e9, 3), "tile": cfg.tile}


def _mean(vals: list[float]) -> float | None:
    return float(np.mean(vals)) if vals else None


def _ratio(a, b):
    return None if a is None or b is None or not b or a != a or b != b else round(float(a) / float(b), 4)


def chain_report(cfg: ChainConfig) -> ChainReport:
    if len(cfg.stages) < 2:
        raise DefakerError("a chain needs the teacher and at least one stage after it")
    data = [_load(s.scores) for s in cfg.stages]
    by_key = [{r["key"]: r for r in d["images"]} for d in data]
    keys = list(by_key[0])
    for s, bk in zip(cfg.stages[1:], by_key[1:]):
        if set(bk) != set(keys):
            raise ArtifactError(f"stage {s.name!r} ({s.scores}) was scored on other images than the teacher "
                                f"({len(bk)} vs {len(keys)}): score every stage on one held-out set")
    teacher = by_key[0]
    domains = sorted({teacher[k]["domain"] for k in keys})
    stages_out = []
    for s, d, bk in zip(cfg.stages, data, by_key):
        slices = {}
        for dom in ["all"] + domains:
            ks = [k for k in keys if dom == "all" or teacher[k]["domain"] == dom]
            y = [teacher[k]["label"] for k in ks]
            a = [bk[k]["fake_prob"] for k in ks]
            t = [teacher[k]["fake_prob"] for k in ks]
            px = [bk[k]["pixel"] for k in ks if bk[k].get("pixel")]
            tpx = [teacher[k]["pixel"] for k in ks if teacher[k].get("pixel")]
            auc = bootstrap_auc(y, a, n=cfg.reps, seed=cfg.seed)
            sl = {"n": len(ks), "image_auc": auc,
                  "pixel_f1": _mean([p["pixel_f1"] for p in px]),
                  "pixel_f1_best": _mean([p["pixel_f1_best"] for p in px]),
                  "pixel_auc": _mean([p["pixel_auc"] for p in px if p.get("pixel_auc") is not None])}
            if s is not cfg.stages[0]:
                sl["auc_vs_teacher"] = bootstrap_auc(y, a, t, n=cfg.reps, seed=cfg.seed)
                t_f1 = _mean([p["pixel_f1"] for p in tpx])
                t_best = _mean([p["pixel_f1_best"] for p in tpx])
                t_auc = image_auc_value(y, t)
                sl["retention"] = {"image_auc": _ratio(auc["value"], t_auc), "pixel_f1": _ratio(sl["pixel_f1"], t_f1),
                                   "pixel_f1_best": _ratio(sl["pixel_f1_best"], t_best)}
            slices[dom] = sl
        stages_out.append({"name": s.name, "scores": s.scores, "note": s.note, "pixel_cut": d.get("pixel_cut", 0.5),
                           "weights_sha256": d.get("weights_sha256"), "ms_1024": s.ms_1024, **_size(s.model),
                           "slices": slices})
    t_params = stages_out[0].get("params")
    for st in stages_out[1:]:
        st["params_vs_teacher"] = _ratio(st.get("params"), t_params)
    report = {"format": "defaker-chain/1", "created": utc_now(), "heldout": data[0].get("heldout"),
              "n_images": len(keys), "reps": cfg.reps, "latency_machine": cfg.machine, "stages": stages_out}
    md = markdown(report)
    paths = []
    if cfg.out:
        write_json(cfg.out, report)
        paths.append(Path(cfg.out))
    if cfg.markdown:
        Path(cfg.markdown).write_text(md)
        paths.append(Path(cfg.markdown))
    return ChainReport(report, md, paths)


def image_auc_value(labels, scores) -> float:
    from ..metrics import image_auc

    return float(image_auc(np.asarray(labels), np.asarray(scores, dtype=np.float64)))


def _f(v, nd=3):
    return "-" if v is None or (isinstance(v, float) and v != v) else f"{v:.{nd}f}"


def markdown(report: dict[str, Any]) -> str:
    """Two tables: the chain (size, cost, overall figures, retention) and image AUC per domain."""
    st = report["stages"]
    lines = ["| stage | params | GMAC / tile | ms / 1024² | image AUC [95% CI] | Δ AUC vs teacher [95% CI] | "
             "pixel F1 (cut) | best-cut F1 | AUC kept | F1 kept |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in st:
        a = s["slices"]["all"]
        auc = a["image_auc"]
        dv = a.get("auc_vs_teacher")
        r = a.get("retention") or {}
        params = f"{s['params']:,}" if isinstance(s.get("params"), int) else "-"
        lines.append(
            f"| {s['name']} | {params} | {_f(s.get('gmac_per_tile'), 2)} | {_f(s.get('ms_1024'), 1)} | "
            f"{_f(auc['value'])} [{_f(auc['lo'])}, {_f(auc['hi'])}] | "
            + (f"{dv['value']:+.3f} [{dv['lo']:+.3f}, {dv['hi']:+.3f}]" if dv else "(teacher)") + " | "
            f"{_f(a['pixel_f1'])} ({_f(s.get('pixel_cut'))}) | {_f(a['pixel_f1_best'])} | "
            f"{_f(r.get('image_auc'))} | {_f(r.get('pixel_f1'))} |")
    doms = [d for d in st[0]["slices"] if d != "all"]
    lines += ["", "| stage | " + " | ".join(f"{d} AUC" for d in doms) + " |", "|---|" + "---|" * len(doms)]
    for s in st:
        lines.append(f"| {s['name']} | " + " | ".join(_f(s["slices"][d]["image_auc"]["value"]) for d in doms) + " |")
    return "\n".join(lines) + "\n"
