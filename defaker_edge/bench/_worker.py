"""Subprocess entry of `latency.run_job`: a job (JSON) on stdin -> one `BENCH_RESULT {json}` line on stdout.

A separate module (not `latency` itself) so `python -m` does not re-import a module the package
has already imported.
"""

from __future__ import annotations

import json
import sys

from .latency import RESULT_TAG, measure_onnx, measure_paired, measure_teacher


def main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        measure = {"teacher": measure_teacher, "paired": measure_paired}.get(job["kind"], measure_onnx)
        res = measure(job)
    except Exception as e:  # reported as the row's reason; the parent never invents a number
        first = str(e).splitlines()[0][:300] if str(e) else ""
        res = {"status": "failed", "reason": f"{type(e).__name__}: {first}"}
    sys.stdout.write(RESULT_TAG + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
