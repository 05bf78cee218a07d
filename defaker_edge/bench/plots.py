"""pareto.png (latency vs AUC and vs pixel F1) and robustness.png, drawn from report.json alone."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display; must precede pyplot's import
    import matplotlib.pyplot as plt

    return plt


def pareto_points(report: dict) -> list[dict]:
    """One point per (variant, backend) with both a latency and an accuracy; accuracy was measured on
    one backend (report['accuracy_backend']) and is shared by the variant's rows on other backends.
    A variant whose file failed its accuracy gate (forced) says so in its label."""
    from .package import forced_precisions, tag

    forced = forced_precisions(report)
    acc = {r["variant"]: r.get("headline") or {} for r in report.get("accuracy", []) if r.get("status") == "ok"}
    pts = []
    for r in report.get("latency", []):
        p50 = (r.get("per_image_ms") or {}).get("p50") if r.get("status") == "ok" else None
        h = acc.get(r["variant"])
        if p50 is None or not h:
            continue
        pts.append({"label": f"{tag(r['variant'], forced)} / {r.get('backend')}", "p50_ms": p50,
                    "forced": r["variant"] in forced,
                    "image_auc": h.get("image_auc"), "pixel_f1": h.get("pixel_f1")})
    return pts


def label_offsets(points: list[tuple[float, float]], *, decades: float = 0.6, dy: float = 0.03,
                  step: float = 9.0) -> list[tuple[float, float]]:
    """Text offsets (points) that stack the labels of nearby markers instead of drawing them on top
    of each other: variants often sit at the same accuracy and within a few times each other's
    latency, and a label at font size 7 spans about half a decade of the log latency axis. Near
    means within `dy` in the accuracy and `decades` (log10) in latency."""
    import math

    placed: list[tuple[float, float]] = []
    out = []
    for x, y in points:
        lx = math.log10(max(x, 1e-9))
        n = sum(1 for px, py in placed if abs(py - y) <= dy and abs(px - lx) <= decades)
        placed.append((lx, y))
        out.append((4.0, 3.0 - step * n))
    return out


def pareto_plot(report: dict, path: str | Path) -> Path:
    plt = _plt()
    pts = pareto_points(report)
    plotted = {p["label"] for p in pts}
    teachers = [{"label": f"{r['variant']} / {r.get('backend')}", "p50_ms": r["per_image_ms"]["p50"]}
                for r in report.get("latency", []) if r.get("kind") == "teacher" and r.get("status") == "ok"
                and (r.get("per_image_ms") or {}).get("p50") and f"{r['variant']} / {r.get('backend')}" not in plotted]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, name in ((axes[0], "image_auc", "image AUC"), (axes[1], "pixel_f1", "pixel F1 @0.5")):
        shown = [p for p in pts if p[key] is not None]
        offsets = label_offsets([(p["p50_ms"], p[key]) for p in shown])
        for p, off in zip(shown, offsets):
            # a forced file is drawn hollow: it was measured, but it is not a validated option
            ax.scatter(p["p50_ms"], p[key], s=40, **({"facecolors": "none", "edgecolors": "red"} if p.get("forced") else {}))
            ax.annotate(p["label"], (p["p50_ms"], p[key]), fontsize=7, xytext=off, textcoords="offset points")
        xs = [p["p50_ms"] for p in shown] + [t["p50_ms"] for t in teachers]
        log = bool(xs) and max(xs) / max(min(xs), 1e-9) > 5  # log only when it spans a range; else labels clutter
        if log:
            ax.set_xscale("log")
        if key == "image_auc":
            ax.axhline(0.5, ls="--", color="black", lw=0.8)
            ax.annotate("chance", (0.01, 0.5), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
        for t in teachers:  # timed, accuracy not measured (random weights): a line, not a point
            ax.axvline(t["p50_ms"], ls="--", color="grey", lw=1)
            ax.annotate(f"{t['label']}\n(accuracy N/A)", (t["p50_ms"], 0.05), fontsize=7, rotation=90,
                        xytext=(-10, 0), textcoords="offset points", ha="right", va="bottom")
        if not shown:
            ax.text(0.5, 0.5, "no variant with both latency and accuracy", ha="center", transform=ax.transAxes)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(f"p50 latency per {report['config']['image_size']}² image (ms{', log scale' if log else ''})")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    n = (report.get("data") or {}).get("n")
    title = f"latency vs accuracy on n={n} images — {report['package']['model_id']}, " \
            f"{report['machine'].get('cpu_cores_usable')}-core " \
            f"CPU{', ' + report['machine']['gpu'] if report['machine'].get('gpu') else ''}"
    return _save(plt, fig, title, path)


def robustness_plot(report: dict, path: str | Path) -> Path | None:
    rb = report.get("robustness") or {}
    rows = rb.get("rows") or []
    if not rows:
        return None
    plt = _plt()
    kinds = list(dict.fromkeys(r["perturbation"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(2, len(kinds), figsize=(3.2 * len(kinds), 6), squeeze=False)
    from .package import forced_precisions, tag

    forced = forced_precisions(report)
    # the baseline on the same images as the curves; reports from before it was measured only have
    # the accuracy run's (all of --data), and the title says which
    same = bool(rb.get("clean"))
    clean = ({r["variant"]: r for r in rb["clean"]} if same else
             {r["variant"]: r.get("headline") or {} for r in report.get("accuracy", []) if r.get("status") == "ok"})
    for j, kind in enumerate(kinds):
        for i, key in enumerate(("image_auc", "pixel_f1")):
            ax = axes[i][j]
            for v in variants:
                pts = sorted((r["level"], r.get(key)) for r in rows if r["variant"] == v and r["perturbation"] == kind)
                xs = [x for x, y in pts if y is not None]
                ys = [y for x, y in pts if y is not None]
                line = ax.plot(xs, ys, marker="o", label=tag(v, forced), ls="--" if v in forced else "-")[0]
                if clean.get(v, {}).get(key) is not None:
                    ax.axhline(clean[v][key], ls=":", color=line.get_color(), lw=1)
            if key == "image_auc":
                ax.axhline(0.5, ls="--", color="black", lw=0.8)  # chance
            ax.set_title(f"{kind}", fontsize=9)
            ax.set_ylim(0.0, 1.02)
            ax.set_xlabel({"jpeg": "JPEG quality", "blur": "kernel k px (sigma = 0.3((k-1)/2-1)+0.8)",
                           "noise": "noise sigma (0..255)", "resize": "scale factor"}.get(kind, kind), fontsize=8)
            if j == 0:
                ax.set_ylabel({"image_auc": "image AUC", "pixel_f1": "pixel F1"}[key])
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    n = rb.get("n_images")
    n_acc = (report.get("data") or {}).get("n")
    base = "clean, same images" if same else f"clean on the accuracy run's {n_acc} images, not these"
    return _save(plt, fig, f"robustness on n={n} images (dotted: {base}; dashed black: chance AUC)", path)


def chain_plot(chain: dict, path: str | Path) -> Path:
    """The compression chain (distill.chain's report) as a Pareto plot: one point per stage, latency per
    1024² image against held-out image AUC (with its 95% bootstrap interval) and against pixel F1 at
    the shipped cut. Stages sit within a few ms and 0.01 of each other, so a legend names them rather
    than labels that would collide. Stages without a latency are left out and named in the title."""
    plt = _plt()
    st = [s for s in chain["stages"] if s.get("ms_1024")]
    missing = [s["name"] for s in chain["stages"] if not s.get("ms_1024")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, name in ((axes[0], "image_auc", "held-out image AUC"), (axes[1], "pixel_f1", "pixel F1 at the shipped cut")):
        for s in st:
            a = s["slices"]["all"]
            params = f", {s['params'] / 1e3:.0f} k params" if s.get("params") else ""
            x = s["ms_1024"]
            if key == "image_auc":
                v = a["image_auc"]
                ax.errorbar([x], [v["value"]], yerr=[[v["value"] - v["lo"]], [v["hi"] - v["value"]]], fmt="o",
                            capsize=3, label=f"{s['name']}{params}")
            else:
                ax.plot([x], [a["pixel_f1"] or 0.0], "o", label=f"{s['name']}{params}")
        if key == "image_auc":
            ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.legend(fontsize=7, loc="best")
        ax.set_xlabel("ms per 1024² image")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    title = f"compression chain on {chain.get('n_images')} held-out images"
    if missing:
        title += f" (no latency: {', '.join(missing)})"
    return _save(plt, fig, title, path)


def _save(plt, fig, title: str, path: str | Path) -> Path:
    """Title, layout, write the PNG and free the figure (a long bench draws many)."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
