"""Regenerate the demo samples in this folder (deterministic): `python samples/make_samples.py`.

Synthesizes a small seeded set with `defaker_edge.data.synth`, then copies one image per slot
(and its ground-truth mask) under a descriptive name. See samples/README.md.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from defaker_edge.data.synth import SynthConfig, synthesize

HERE = Path(__file__).resolve().parent
SEED = 7
# (file stem, domain, kind, needs a real-photo source)
SLOTS = [
    ("real_photo", "natural", "authentic", True),
    ("fake_splice_photo", "natural", "splice", True),
    ("fake_copy_move", "natural", "copy_move", True),
    ("fake_document_text", "document", "doc_text_replace", False),
    ("fake_face_swap", "face", "face_swap", False),
    ("fake_aigc", "aigc", "generated", False),
    ("real_document", "document", "authentic", False),
]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        res = synthesize(SynthConfig(out=Path(tmp) / "s", n=160, seed=SEED, size_min=384, size_max=512,
                                     jpeg_prob=1.0, noise_prob=0.0))
        lines = [json.loads(x) for x in res.manifest.read_text().splitlines()]
        (HERE / "masks").mkdir(exist_ok=True)
        rows = []
        for stem, domain, kind, photo in SLOTS:
            pick = next((d for d in lines if d["domain"] == domain and d["kind"] == kind
                         and (not photo or d["source"].startswith("photo:"))), None)
            if pick is None:
                print(f"no {domain}/{kind} in this run", file=sys.stderr)
                return 1
            src = res.out / pick["image"]
            dst = HERE / f"{stem}{src.suffix}"
            shutil.copyfile(src, dst)
            mask = None
            if pick["mask"]:
                mask = HERE / "masks" / f"{stem}.png"
                shutil.copyfile(res.out / pick["mask"], mask)
            rows.append((dst, pick, mask))
        for dst, d, mask in rows:
            print(f"{dst.name}\t{d['label']}\t{d['domain']}\t{d['kind']}\t{d['source']}\t{d['size']}\t"
                  f"{'masks/' + mask.name if mask else '-'}\t{dst.stat().st_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
