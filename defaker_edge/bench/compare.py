"""Compare two bench reports: per (variant, backend) p50 latency ratio and AUC / pixel-F1 deltas.

ratio = this p50 / other p50 (below 1: this run is faster); delta = this - other. Rows are
matched by variant and backend; a row missing or not measured on either side says so. AUC and F1
deltas mean something only on the same images: when the two reports' data sets differ (number of
images, manifest sha256, split, domains), the comparison carries a warning for each difference.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts import read_json
from ..errors import ArtifactError
from .report import FORMAT, SCHEMA_VERSION


def load_report(path: str | Path) -> dict:
    r = read_json(path)
    if not isinstance(r, dict) or r.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a bench report (format {r.get('format') if isinstance(r, dict) else None!r})")
    if r.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema_version {r.get('schema_version')} (this bench reads {SCHEMA_VERSION})")
    return r


def _p50(row: dict | None):
    if not row or row.get("status") != "ok":
        return None
    return (row.get("per_image_ms") or {}).get("p50")


def _acc(report: dict) -> dict[str, dict]:
    return {r["variant"]: (r.get("headline") or {}) for r in report.get("accuracy", []) if r.get("status") == "ok"}


def data_differences(this: dict, other: dict) -> list[str]:
    """Why the two reports' accuracy figures are not on the same images (empty: no known difference)."""
    a, b = this.get("data") or {}, other.get("data") or {}
    if not a or not b:
        return [] if a == b else ["one report has no accuracy data set"]
    out = []
    if a.get("n") != b.get("n"):
        out.append(f"data sets differ: n={a.get('n')} images here, n={b.get('n')} in the other report")
    if a.get("sha256") and b.get("sha256") and a["sha256"] != b["sha256"]:
        out.append(f"data sets differ: manifest sha256 {a['sha256'][:12]} here, {b['sha256'][:12]} in the other report")
    elif not (a.get("sha256") and b.get("sha256")) and a.get("path") != b.get("path"):
        out.append(f"data sets may differ: {a.get('path')} here, {b.get('path')} in the other report (no sha256)")
    if a.get("split") != b.get("split"):
        out.append(f"data sets differ: split {a.get('split')} here, {b.get('split')} in the other report")
    if a.get("domains") and b.get("domains") and a["domains"] != b["domains"]:
        out.append(f"data sets differ: domains {a['domains']} here, {b['domains']} in the other report")
    return out


def compare_reports(this: dict, other: dict, other_name: str = "other") -> dict:
    a_lat = {(r["variant"], r.get("backend")): r for r in this.get("latency", [])}
    b_lat = {(r["variant"], r.get("backend")): r for r in other.get("latency", [])}
    a_acc, b_acc = _acc(this), _acc(other)
    rows = []
    for key in list(a_lat) + [k for k in b_lat if k not in a_lat]:
        pa, pb = _p50(a_lat.get(key)), _p50(b_lat.get(key))
        ha, hb = a_acc.get(key[0], {}), b_acc.get(key[0], {})
        row = {"variant": key[0], "backend": key[1], "p50_ms": pa, "other_p50_ms": pb,
               "p50_ratio": pa / pb if pa and pb else None}
        for k in ("image_auc", "pixel_f1"):
            va, vb = ha.get(k), hb.get(k)
            row[k], row[f"other_{k}"] = va, vb
            row[f"{k}_delta"] = va - vb if va is not None and vb is not None else None
        rows.append(row)
    return {"other": other_name, "other_created": other.get("created"),
            "other_machine": (other.get("machine") or {}).get("cpu_model"),
            "other_gpu": (other.get("machine") or {}).get("gpu"), "rows": rows,
            "warnings": data_differences(this, other)}


def _f(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def compare_markdown(c: dict) -> str:
    lines = [f"## Compared with {c['other']} ({c.get('other_created')}, {c.get('other_machine')}"
             + (f", GPU {c['other_gpu']}" if c.get("other_gpu") else "") + ")", "",
             *[f"**Warning: {w}; the AUC and F1 deltas compare different images.**\n" for w in c.get("warnings", [])],
             "ratio = this p50 / other p50 (< 1: this run is faster); delta = this - other.", "",
             "| variant | backend | p50 ms | other p50 ms | p50 ratio | AUC | other AUC | AUC delta | F1 delta |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in c["rows"]:
        lines.append(f"| {r['variant']} | {r['backend']} | {_f(r['p50_ms'], '.1f')} | {_f(r['other_p50_ms'], '.1f')} | "
                     f"{_f(r['p50_ratio'], '.3f')} | {_f(r['image_auc'], '.3f')} | {_f(r['other_image_auc'], '.3f')} | "
                     f"{_f(r['image_auc_delta'], '+.3f')} | {_f(r['pixel_f1_delta'], '+.3f')} |")
    return "\n".join(lines)


def compare_text(c: dict) -> str:
    """Plain text for the terminal."""
    head = f"{'variant':<24} {'backend':<9} {'p50 ms':>9} {'other':>9} {'ratio':>7} {'AUC':>6} {'other':>6} {'dAUC':>7}"
    out = [f"WARNING: {w}; the AUC deltas compare different images" for w in c.get("warnings", [])]
    out += [f"compared with {c['other']}", head]
    for r in c["rows"]:
        out.append(f"{r['variant']:<24} {str(r['backend']):<9} {_f(r['p50_ms'], '9.1f'):>9} "
                   f"{_f(r['other_p50_ms'], '9.1f'):>9} {_f(r['p50_ratio'], '7.3f'):>7} {_f(r['image_auc'], '6.3f'):>6} "
                   f"{_f(r['other_image_auc'], '6.3f'):>6} {_f(r['image_auc_delta'], '+7.3f'):>7}")
    return "\n".join(out)
