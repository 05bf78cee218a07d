"""Synthetic forgeries with pixel-exact masks, in four domains.

`synthesize(SynthConfig(out, n, seed=0, domains=..., size_min=256, size_max=1024)) -> SynthResult`
writes OUT/images/, OUT/masks/ (fakes only; PNG 0/255 at the image's size), OUT/manifest.jsonl
(one `Sample` per line: image, mask, label, domain, kind, split, source, ...) and OUT/manifest.json.

- natural: real photos (assets/photos) and procedural scenes; splice, copy_move, inpaint,
  retouch, resample, double_jpeg.
- document: rendered receipts/forms/letters, scanned; doc_text_replace, doc_char_copy_move,
  doc_erase, doc_splice.
- face: procedural face-like drawings (not photos of people); face_swap, face_part_swap, face_retouch.
- aigc: kind "generated": whole images with generator traces; the mask is all ones by convention.

Masks are exact: the pixels whose values the manipulation changed (before the final global
noise/JPEG, which is applied to authentic images alike). Same seed, same bytes.
"""

from .config import SynthConfig, SynthConfigError, SynthResult
from .core import make_one, plan, synthesize

__all__ = ["SynthConfig", "SynthConfigError", "SynthResult", "synthesize", "make_one", "plan"]
