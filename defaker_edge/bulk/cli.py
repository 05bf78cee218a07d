"""`defaker bulk`: check many images on Ray Data. Standard library only at module level: Ray is
imported when the command runs (the bulk extra), so `defaker --help` works without it."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  defaker bulk photos/ more/ --out results/                  a local Ray on this machine's cores
  defaker bulk @list.txt s3://bucket/images/ --out s3://bucket/verdicts/ --masks
  RAY_ADDRESS=ray://head:10001 defaker bulk s3://bucket/images/ --out s3://bucket/verdicts/
  defaker bulk photos/ --out results/ --gpus-per-actor 1     one actor per GPU of the cluster

OUT gets part-*.parquet: one row per image with every verdict field (image, fake_prob, is_fake,
threshold, logit, backend, precision, provider, fallback, warning, ms and its parts, height, width,
tiles, package_id, manifest_sha256, package_problems, mask, checked_at) or an `error` (a file that
cannot be read, a folder that cannot be listed: one bad input never stops the job). Run it again
and it checks only what OUT has no row for (--retry-errors: also the error rows). Masks go to
--mask-dir (default OUT/masks) as <stem>-<hash of the path>.mask.png.

Exit status: 0 every image judged; 1 --fail-on-fake and one was judged fake; 2 usage error,
package or Ray problem (nothing checked); 3 some inputs could not be read (error rows); wins over 1.
Needs the bulk extra: pip install '.[bulk]'.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..runtime.cli import BACKENDS, PRECISIONS, _Fmt

    b = sub.add_parser("bulk", help="check many images on Ray Data (a cluster or this machine) into Parquet",
                       description="Check folders, lists or object-store prefixes of images with an actor pool "
                                   "of Detectors on Ray Data; one Parquet row per image.",
                       epilog=EPILOG, formatter_class=_Fmt)
    b.add_argument("sources", nargs="+", metavar="SRC",
                   help="folders (recursive), image files, @LIST files, - (stdin); local or URIs (s3://, gs://, ...)")
    b.add_argument("--out", required=True, help="folder (local or URI) for part-*.parquet; resume reads it")
    b.add_argument("--package", help="package directory (default: the one installed with defaker-edge)")
    b.add_argument("--backend", choices=BACKENDS, default="auto")
    b.add_argument("--precision", choices=PRECISIONS, default="auto")
    b.add_argument("--fallback", choices=("auto", "never"), default="auto")
    b.add_argument("--batch-size", type=int, default=8, help="tiles per backend call")
    b.add_argument("--images-per-call", type=int, default=16, help="images an actor checks per Ray Data batch")
    b.add_argument("--masks", action="store_true", help="write each image's mask PNG")
    b.add_argument("--mask-dir", help="where masks go (default OUT/masks); implies --masks")
    b.add_argument("--actors", type=int, default=None,
                   help="actor pool size (default: one per GPU with --gpus-per-actor, else one per spare CPU core)")
    b.add_argument("--cpus-per-actor", type=float, default=1.0, help="Ray num_cpus per actor (fractions work)")
    b.add_argument("--gpus-per-actor", type=float, default=0.0, help="Ray num_gpus per actor (0: CPU actors)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads per actor (default: cluster CPUs / actors)")
    b.add_argument("--max-pixels", type=int, default=100_000_000, help="refuse larger images")
    b.add_argument("--decode-timeout", type=float, default=5.0, metavar="S", help="seconds of decoding per 10 MP; 0 = none")
    b.add_argument("--retry-errors", action="store_true", help="resume also redoes images whose row is an error")
    b.add_argument("--rows-per-file", type=int, default=10_000, help="rows per Parquet part (also one a minute)")
    b.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    b.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray started here (default: all)")
    b.add_argument("--fail-on-fake", action="store_true", help="exit 1 when any image is judged fake")
    b.add_argument("--json", action="store_true", help="print the run's summary as one JSON object on stdout")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from . import BulkConfig, run_bulk

    cfg = BulkConfig(sources=args.sources, out=args.out, package=args.package, backend=args.backend,
                     precision=args.precision, fallback=args.fallback, batch_size=args.batch_size,
                     images_per_call=args.images_per_call, masks=args.masks or bool(args.mask_dir),
                     mask_dir=args.mask_dir, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                     gpus_per_actor=args.gpus_per_actor, threads=args.threads, max_pixels=args.max_pixels,
                     decode_timeout=args.decode_timeout or None, retry_errors=args.retry_errors,
                     rows_per_file=args.rows_per_file, address=args.address, num_cpus=args.num_cpus,
                     progress=not args.quiet)
    res = run_bulk(cfg)
    if args.json:
        print(json.dumps(asdict(res)))
    else:
        print(f"defaker bulk: {res.checked} row(s) written to {res.out} ({res.errors} error(s), {res.fakes} fake), "
              f"{res.skipped} already there; {res.seconds:.1f} s, {res.images_per_s:.1f} img/s", file=sys.stderr)
    if res.errors:
        return 3
    return 1 if args.fail_on_fake and res.fakes else 0
