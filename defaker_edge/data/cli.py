"""`defaker data synth`: synthetic forgeries with pixel-exact masks (standard library at import)."""

from __future__ import annotations

import argparse
import json
import sys

DOMAINS = ("natural", "document", "face", "aigc")  # mirrors data.dataset.DOMAINS (no imports here)

SYNTH_EPILOG = """\
Output:
  OUT/images/NNNNNN.jpg|png   every image (JPEG quality 60-100 or PNG, reals and fakes alike)
  OUT/masks/NNNNNN.png        fakes only: 255 = pixel changed by the manipulation, 0 = untouched;
                              aigc fakes are all 255 (every pixel generated)
  OUT/manifest.jsonl          one line per image: image, mask, label, domain, kind, split, source, ...
  OUT/manifest.json           what made it (config, tool versions) and counts

Domains and kinds:
  natural   bundled real photos + procedural scenes: splice, copy_move, inpaint, retouch,
            resample, double_jpeg
  document  rendered receipts/forms/letters, scanned: doc_text_replace, doc_char_copy_move,
            doc_erase, doc_splice
  face      procedural face-like drawings (not photos of people): face_swap, face_part_swap,
            face_retouch
  aigc      whole images with generator traces (checkerboard upsampling, spectral peaks,
            over-smoothing): generated
Half the images are authentic (kind "authentic"). Splits (train/val/test, 80/10/10) depend on the
index only. The same --seed gives byte-identical files whatever --workers is.

Examples:
  defaker data synth --out data/train --n 2000 --seed 0
  defaker data synth --out data/docs --n 200 --domains document --size-min 512 --size-max 1024
"""


def _domains(text: str) -> tuple[str, ...]:
    return tuple(d.strip() for d in text.split(",") if d.strip())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: synthetic forgeries",
                       description="Dataset tools. `defaker data synth --help` for synthetic forgeries.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    s = dsub.add_parser(
        "synth", help="write synthetic forgeries with pixel-exact masks",
        description="Write N synthetic images (half authentic, half manipulated) over four domains, "
                    "with exact masks and a manifest.jsonl that every other stage reads.",
        epilog=SYNTH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--out", required=True, help="output directory (created)")
    s.add_argument("--n", type=int, required=True, help="number of images")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--domains", default=",".join(DOMAINS),
                   help="comma list of natural,document,face,aigc (default: all four, cycled)")
    s.add_argument("--size-min", type=int, default=256, help="smallest image side in px (default 256)")
    s.add_argument("--size-max", type=int, default=1024, help="largest image side in px (default 1024)")
    s.add_argument("--jpeg-prob", type=float, default=0.7,
                   help="probability that an image is saved as JPEG (quality 60-100), else PNG (default 0.7)")
    s.add_argument("--photos", default=None, metavar="DIR",
                   help="a `defaker data photos` dir: natural images become edits of its train-split "
                        "camera photos (their own JPEG history kept), documents get a scanner's first "
                        "save and 0-2 recompressions before the final save (see synth/photo.py)")
    s.add_argument("--workers", type=int, default=None,
                   help="processes (default: 1 below 64 images, else 2); output does not depend on it")
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    s.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    s.set_defaults(func=run_synth)
    register_photos(dsub)
    mg = dsub.add_parser(
        "merge", help="one manifest over several datasets",
        description="Write OUT (a manifest.jsonl) listing every sample of the given manifests, paths "
                    "relative to OUT, splits kept: e.g. photo-based natural and document forgeries "
                    "beside procedural faces and generated images, in the proportions you made them.",
        epilog="Example:\n  defaker data merge --out data/train/manifest.jsonl data/photo/manifest.jsonl "
               "data/proc/manifest.jsonl", formatter_class=argparse.RawDescriptionHelpFormatter)
    mg.add_argument("--out", required=True, help="the merged manifest.jsonl to write")
    mg.add_argument("manifests", nargs="+", help="manifest.jsonl files (or dataset dirs) to merge")
    mg.set_defaults(func=run_merge)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def run_merge(args: argparse.Namespace) -> int:
    from collections import Counter

    from .dataset import load_dataset, write_manifest

    samples = []
    for m in args.manifests:
        samples += load_dataset(m)
    write_manifest(args.out, samples)
    by = Counter((s.domain, s.split) for s in samples)
    print(f"{args.out}: {len(samples)} samples ("
          + ", ".join(f"{d}/{sp} {n}" for (d, sp), n in sorted(by.items(), key=str)) + ")", file=sys.stderr)
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from .synth import SynthConfig, synthesize

    cfg = SynthConfig(out=args.out, n=args.n, seed=args.seed, domains=_domains(args.domains),
                      size_min=args.size_min, size_max=args.size_max, jpeg_prob=args.jpeg_prob,
                      workers=args.workers, overwrite=args.overwrite, progress=True, photos=args.photos)
    res = synthesize(cfg)
    kinds = ", ".join(f"{k} {v}" for k, v in res.counts["kind"].items())
    print(f"wrote {res.n} images to {res.out} in {res.seconds:.1f} s: {res.images_per_s:.1f} images/s "
          f"with {res.workers} worker(s), {res.images_per_cpu_s:.1f} images per CPU-second ({kinds})",
          file=sys.stderr)
    if args.json:
        print(json.dumps(res.to_json()))
    return 0


def register_photos(dsub) -> None:
    """`data photos` and `data heldout` (real photographs and the independent held-out set)."""
    ph = dsub.add_parser(
        "photos", help="collect real camera photos from Debian packages (sha256-verified)",
        description="Copy the real photographs listed in defaker_edge/data/photo_sources.jsonl out of "
                    "their Debian packages, byte for byte, verify each sha256 and write DIR/photos.jsonl. "
                    "Works offline when DIR already holds every file.")
    ph.add_argument("--out", required=True, help="output directory (files/ and photos.jsonl)")
    ph.add_argument("--debs", default=None, help="folder of already downloaded .debs to reuse")
    ph.add_argument("--cache", default=None, help="where downloaded .debs go (default OUT/debs)")
    ph.add_argument("--sources", default=None, help="sources list (default: the committed photo_sources.jsonl)")
    ph.add_argument("--packages", default=None, help="comma list: only these packages")
    ph.add_argument("--offline", action="store_true", help="never run apt-get download")
    ph.set_defaults(func=run_photos)
    h = dsub.add_parser(
        "heldout", help="held-out forgeries on held-out real photos (independent generator)",
        description="Write N images (half authentic) from the split=heldout photos of --photos: natural-photo "
                    "forgeries and edited documents, in the same layout as `data synth` (split test).")
    h.add_argument("--photos", required=True, help="a `defaker data photos` output directory")
    h.add_argument("--out", required=True, help="output directory (created)")
    h.add_argument("--n", type=int, required=True, help="number of images")
    h.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    h.add_argument("--domains", default="natural,document", help="comma list of natural,document")
    h.add_argument("--overwrite", action="store_true", help="replace an existing set in --out")
    h.set_defaults(func=run_heldout)


def run_photos(args: argparse.Namespace) -> int:
    from .photos import SOURCES, collect

    pk = _domains(args.packages) if args.packages else None
    res = collect(args.out, sources=args.sources or SOURCES, debs=args.debs, cache=args.cache,
                  packages=pk, download=not args.offline)
    counts: dict = {}
    for e in res.photos:
        counts[(e["split"], e["package"])] = counts.get((e["split"], e["package"]), 0) + 1
    per = ", ".join(f"{p} {n} ({s})" for (s, p), n in sorted(counts.items()))
    print(f"wrote {len(res.photos)} photos to {res.out}/photos.jsonl: {per}", file=sys.stderr)
    if not res.ok:
        print(f"photos: {len(res.failed_packages)} package(s) could not be fetched, "
              f"{len(res.bad_files)} file(s) missing or with another sha256 (listed above)", file=sys.stderr)
        return 1
    return 0


def run_heldout(args: argparse.Namespace) -> int:
    from .heldout import HeldoutConfig, generate

    res = generate(HeldoutConfig(photos=args.photos, out=args.out, n=args.n, seed=args.seed,
                                 domains=_domains(args.domains), overwrite=args.overwrite))
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(res["counts"].items()))
    print(f"wrote {res['n']} images to {args.out} in {res['seconds']:.1f} s "
          f"({res['n'] / max(res['seconds'], 1e-9):.2f} images/s): {kinds}", file=sys.stderr)
    return 0
