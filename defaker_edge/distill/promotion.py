"""Is a checkpoint better than the shipped student? A paired bootstrap on the held-out set.

Both score files come from distill.program.heldout_scores on the same images (the same manifest,
image by image). A candidate is promotable when the lower end of the 95% interval of its image-AUC
gain over all held-out images is above zero, and no domain's gain interval lies wholly below zero
(a gain on photos must not be bought with a loss on documents).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError
from ..metrics import bootstrap_auc


def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: no held-out scores (run `defaker train baseline` / `defaker train run` first)")
    return json.loads(p.read_text())


def compare(candidate: str, baseline: str, reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    cand, base = _load(candidate), _load(baseline)
    ci = {r["key"]: r for r in cand["images"]}
    bi = {r["key"]: r for r in base["images"]}
    keys = [k for k in bi if k in ci]
    if len(keys) < len(bi) or len(keys) < len(ci):
        raise ArtifactError(f"{candidate} and {baseline} were scored on different images "
                            f"({len(ci)} vs {len(bi)}, {len(keys)} shared): score both on one held-out set")
    out: dict[str, Any] = {"candidate": {"step": cand.get("step"), "weights_sha256": cand.get("weights_sha256")},
                           "baseline": {"student": base.get("student"), "weights_sha256": base.get("weights_sha256")},
                           "heldout": base.get("heldout"), "reps": reps, "slices": {}}
    domains = sorted({bi[k]["domain"] for k in keys})
    for name in ["all"] + domains:
        ks = [k for k in keys if name == "all" or bi[k]["domain"] == name]
        y = [bi[k]["label"] for k in ks]
        a = [ci[k]["fake_prob"] for k in ks]
        b = [bi[k]["fake_prob"] for k in ks]
        d = bootstrap_auc(y, a, b, n=reps, seed=seed)
        fa = [ci[k]["pixel"]["pixel_f1_best"] for k in ks if ci[k].get("pixel")]
        fb = [bi[k]["pixel"]["pixel_f1_best"] for k in ks if bi[k].get("pixel")]
        out["slices"][name] = {
            "n": len(ks),
            "auc_candidate": bootstrap_auc(y, a, n=reps, seed=seed),
            "auc_baseline": bootstrap_auc(y, b, n=reps, seed=seed),
            "auc_delta": d,
            "pixel_f1_best_candidate": float(np.mean(fa)) if fa else None,
            "pixel_f1_best_baseline": float(np.mean(fb)) if fb else None,
        }
    s = out["slices"]
    gain = s["all"]["auc_delta"]["lo"] > 0
    no_loss = all(s[d]["auc_delta"]["hi"] >= 0 for d in domains)
    out["promote"] = bool(gain and no_loss)
    out["rule"] = ("95% bootstrap interval of the image-AUC gain over all held-out images above 0, "
                   "and no domain's interval wholly below 0")
    return out


def format_table(res: dict[str, Any]) -> str:
    rows = ["| slice | n | candidate AUC [95%] | baseline AUC [95%] | gain [95%] | best-cut F1 cand / base |",
            "|---|---|---|---|---|---|"]
    for name, s in res["slices"].items():
        c, b, d = s["auc_candidate"], s["auc_baseline"], s["auc_delta"]
        f = (f"{s['pixel_f1_best_candidate']:.3f} / {s['pixel_f1_best_baseline']:.3f}"
             if s["pixel_f1_best_candidate"] is not None else "-")
        rows.append(f"| {name} | {s['n']} | {c['value']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}] | "
                    f"{b['value']:.3f} [{b['lo']:.3f}, {b['hi']:.3f}] | "
                    f"{d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] | {f} |")
    verdict = "promote" if res["promote"] else "do not promote"
    return "\n".join(rows) + f"\n\n{verdict}: {res['rule']}"


def plot_ledger(ledger: str, out: str) -> str:
    """Held-out image AUC per domain and the training loss against cumulative CPU hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = Path(ledger)
    if not p.is_file():
        raise ArtifactError(f"{p}: no ledger")
    lines = [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]
    # checkpoints and `train eval` lines make the curve; baseline, promotion and teacher lines do not
    runs = [ln for ln in lines if ln.get("kind") in (None, "eval")]
    base = [ln for ln in lines if ln.get("kind") == "baseline"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    evals = [ln for ln in runs if "heldout" in ln]
    for dom, style in (("all", "-o"), ("natural", "--s"), ("document", ":^")):
        # the program starts from the shipped student: its score is the curve's point at 0 CPU hours
        start = [(0.0, base[0]["heldout"][dom]["image_auc"])] if base and dom in base[0]["heldout"] else []
        pts = start + [(ln["cpu_hours"], ln["heldout"][dom]["image_auc"]) for ln in evals if dom in ln["heldout"]]
        if pts:
            ax1.plot(*zip(*pts), style, label=f"{dom}")
        if base and dom in base[-1]["heldout"]:
            ax1.axhline(base[-1]["heldout"][dom]["image_auc"], ls=style[:-1] or "-", lw=0.8, color="grey")
    ax1.axhline(0.5, color="k", lw=0.5)
    # where the training set changed (new photos, a session's fresh forgeries): the ledger's data_sha256
    prev, marks = None, []
    for a, b in zip(runs, runs[1:]):
        sa, sb = a.get("data_sha256"), b.get("data_sha256")
        prev = sa or prev
        if sb and prev and sb != prev:
            marks.append(a["cpu_hours"])
    for k, x in enumerate(marks):
        for ax in (ax1, ax2):
            ax.axvline(x, ls=":", lw=0.8, color="tab:purple", label="training set changed" if k == 0 and ax is ax1 else None)
    ax1.set_xlabel("CPU hours of the program (cumulative, all sessions)")
    ax1.set_ylabel("held-out image AUC")
    ax1.set_title(f"held-out real-photo set (n={evals[-1]['heldout']['all']['n'] if evals else 0}); "
                  "at 0 and grey: the shipped student", fontsize=9)
    ax1.legend(fontsize=8)
    xs = [ln["cpu_hours"] for ln in runs if ln.get("train_loss") is not None]
    ax2.plot(xs, [ln["train_loss"] for ln in runs if ln.get("train_loss") is not None], "-")
    ax2.set_xlabel("CPU hours (cumulative, all sessions)")
    ax2.set_ylabel("training loss (mean of the last 200 steps)")
    ax2.set_title("training loss", fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return (f"learning curve ({len(evals)} held-out points, {len(runs)} checkpoints, "
            f"{len(marks)} training-set changes) written to {out}")
