"""Turn `defaker check --json` lines into an eval predictions file (for the demo).

usage: demo_score.py VERDICTS.jsonl MANIFEST.jsonl               -> predictions on stdout
                                                                  (each verdict's "mask" and "heatmap")
       demo_score.py --oracle MANIFEST.jsonl                    -> ground truth as predictions
                                                                  (checks the metrics path only)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if argv[:1] == ["--oracle"]:
        man = Path(argv[1])
        for line in man.read_text().splitlines():
            d = json.loads(line)
            mask = str((man.parent / d["mask"]).resolve()) if d.get("mask") else None
            print(json.dumps({"image": d["image"], "fake_prob": float(d["label"]), "mask": mask}))
        return 0
    verdicts, manifest = Path(argv[0]), Path(argv[1])
    by_name = {}
    for line in verdicts.read_text().splitlines():
        v = json.loads(line)
        if "error" not in v:
            by_name[os.path.basename(v["image"])] = v
    for line in manifest.read_text().splitlines():
        d = json.loads(line)
        name = os.path.basename(d["image"])
        v = by_name.get(name)
        if v is None:
            continue
        mask = Path(v["mask"]) if v.get("mask") else None
        heat = Path(v["heatmap"]) if v.get("heatmap") else None
        out = {"image": d["image"], "fake_prob": v["fake_prob"],
               "mask": str(mask.resolve()) if mask and mask.exists() else None}
        if heat and heat.exists():  # eval scores the heatmap at the package's pixel threshold
            out.update(heatmap=str(heat.resolve()), pixel_threshold=v["pixel_threshold"])
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
