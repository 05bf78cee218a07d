"""The image-score lever, measured without training: how should tile and mask outputs become one score?

The runtime scores an image by its maximum tile logit (DESIGN §5). ManTra-Net's idea is to judge a
region against its own image's statistics; this script scores a student's outputs on a manifest both
ways and prints image AUC per domain for each rule, with the paired bootstrap difference to the max.

  python scripts/image_score_ablation.py dump STUDENT MANIFEST SPLIT N OUT.json   # tile logits + mask stats
  python scripts/image_score_ablation.py table OUT.json [OUT2.json ...]          # AUC per rule and domain

Rules: max_tile (shipped), mean_tile, max_minus_median_tile (a tile against the image's typical tile),
mask_p99 (99th percentile of the soft mask's logits), mask_p99_minus_median and block_max_minus_median
(the strongest 8x8 block against the image's median block), and max_tile + 0.5 x the block contrast.
Pick a rule on the recipe's validation split and confirm it on held-out images, never the reverse.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def dump(student: str, manifest: str, split: str, n: int, out: str) -> None:
    import torch

    from defaker_edge.data import load_dataset, load_dataset_image
    from defaker_edge.distill.evaluate import tile_outputs
    from defaker_edge.runtime.dct import read_qtable
    from defaker_edge.runtime.tiling import blend_window
    from defaker_edge.student.inputs import dct_spec
    from defaker_edge.student.io import load_student

    model, cfg = load_student(student)
    samples = load_dataset(manifest, split=None if split == "all" else split)[:n]
    T, spec, q4 = cfg.tile, dct_spec(model), cfg.tile // 4
    rows = []
    with torch.no_grad():
        for s in samples:
            img = load_dataset_image(s.image)
            h, w = img.shape[:2]
            origins, L, M = tile_outputs(model, img, T, qtable=read_qtable(s.image) if spec else None)
            # quarter-resolution mask logits, blended over the overlaps as the runtime does
            acc = np.zeros((max(h, T) // 4 + 1, max(w, T) // 4 + 1), np.float32)
            wsum = np.zeros_like(acc)
            win = blend_window(q4, 16)
            for (y, x), m in zip(origins, M):
                acc[y // 4:y // 4 + q4, x // 4:x // 4 + q4] += m * win
                wsum[y // 4:y // 4 + q4, x // 4:x // 4 + q4] += win
            ml = (acc / np.maximum(wsum, 1e-6))[: -(-h // 4), : -(-w // 4)]
            hb, wb = ml.shape[0] // 2 * 2, ml.shape[1] // 2 * 2
            blocks = ml[:hb, :wb].reshape(hb // 2, 2, wb // 2, 2).mean((1, 3))
            rows.append({"key": s.key, "label": int(s.label), "domain": s.domain, "kind": s.kind,
                         "tiles": [float(x) for x in L], "mask_median": float(np.median(ml)),
                         "mask_p99": float(np.quantile(ml, 0.99)), "block_max": float(blocks.max()),
                         "block_median": float(np.median(blocks))})
    with open(out, "w") as f:
        json.dump({"student": student, "manifest": manifest, "split": split, "images": rows}, f)
    print(f"{out}: {len(rows)} images")


def rules(r: dict) -> dict[str, float]:
    t = np.asarray(r["tiles"])
    contrast = r["block_max"] - r["block_median"]
    return {"max_tile": t.max(), "mean_tile": t.mean(), "max_minus_median_tile": t.max() - np.median(t),
            "mask_p99": r["mask_p99"], "mask_p99_minus_median": r["mask_p99"] - r["mask_median"],
            "block_max_minus_median": contrast, "max_tile + 0.5 block contrast": t.max() + 0.5 * contrast}


def table(paths: list[str]) -> None:
    from defaker_edge.metrics import bootstrap_auc

    for path in paths:
        d = json.load(open(path))
        rows = d["images"]
        feats = [rules(r) for r in rows]
        doms = ["all"] + sorted({r["domain"] for r in rows})
        print(f"\n{path} ({d['split']} of {d['manifest']}, {len(rows)} images): AUC (difference to max_tile [95%])")
        print("| rule | " + " | ".join(doms) + " |\n|---|" + "---|" * len(doms))
        for k in feats[0]:
            cells = []
            for dom in doms:
                idx = [i for i, r in enumerate(rows) if dom == "all" or r["domain"] == dom]
                y = [rows[i]["label"] for i in idx]
                a, b = [feats[i][k] for i in idx], [feats[i]["max_tile"] for i in idx]
                v = bootstrap_auc(y, a, n=1000)["value"]
                dd = bootstrap_auc(y, a, b, n=1000)
                cells.append(f"{v:.3f}" if k == "max_tile" else f"{v:.3f} ({dd['value']:+.3f} [{dd['lo']:+.3f}, {dd['hi']:+.3f}])")
            print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) >= 7 and sys.argv[1] == "dump":
        dump(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
    elif len(sys.argv) >= 3 and sys.argv[1] == "table":
        table(sys.argv[2:])
    else:
        sys.exit(__doc__)
