"""The bulk stage's typed config and result."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.io import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS


@dataclass
class BulkConfig:
    """sources: folders (walked recursively), image files, `@LIST` files (one path or URI a line),
    `-` (stdin), each local or a URI that pyarrow reads (s3://bucket/prefix, gs://, hdfs://).
    out: the folder (local or a URI) that receives `part-*.parquet`; it is also what resume reads."""

    sources: list[str]
    out: str
    package: str | None = None  # None: the package installed with defaker-edge
    backend: str = "auto"
    precision: str = "auto"
    fallback: str = "auto"
    batch_size: int = 8  # tiles per backend call, across images
    images_per_call: int = 16  # images an actor gets at once (Ray Data's batch)
    masks: bool = False  # write each verdict's mask PNG (into mask_dir)
    mask_dir: str | None = None  # default OUT/masks
    actors: int | None = None  # None: one per GPU, or one per spare CPU core (all cores but one)
    cpus_per_actor: float = 1.0  # Ray's num_cpus per actor (fractional works)
    gpus_per_actor: float = 0.0  # > 0: actors on GPUs (num_gpus), the backend then picks the GPU path
    threads: int | None = None  # CPU threads per actor's Detector; None: cluster CPUs / actors
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT
    retry_errors: bool = False  # resume: also redo images whose row is an error
    rows_per_file: int = 10_000  # a Parquet part file is written at this many rows ...
    flush_s: float = 60.0  # ... or this many seconds after the previous one (a crash loses at most this)
    address: str | None = None  # the Ray cluster; None: $RAY_ADDRESS, else a local Ray started here
    num_cpus: int | None = None  # CPUs of a local Ray started here (None: all)
    progress: bool = True  # progress on stderr (a bar on a terminal, else a line every 10 s)


@dataclass
class BulkResult:
    out: str
    inputs: int  # images and unreadable inputs found in the sources
    skipped: int  # already in OUT (resume)
    checked: int  # rows written by this run
    errors: int  # of which error rows
    fakes: int
    files: list[str] = field(default_factory=list)  # part files written by this run
    seconds: float = 0.0
    images_per_s: float = 0.0
    actors: int = 0
