"""Shared fixtures.

`tiny_data`: Path of a manifest.jsonl of 24 small synthetic images (sides 256-384, all four
domains, 12 authentic + 12 manipulated, splits 8/8/8, seed 0), made once per test session.
`tiny_data_dir`: its directory (images/, masks/, manifest.jsonl, manifest.json).
Treat both as read-only: they are shared by every test in the session.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    from defaker_edge.data.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("tiny_data")
    synthesize(SynthConfig(out=out, n=24, seed=0, size_min=256, size_max=384, workers=1))
    return out


@pytest.fixture(scope="session")
def tiny_data(tiny_data_dir) -> Path:
    return tiny_data_dir / "manifest.jsonl"


@pytest.fixture(scope="session")
def tiny_teacher():
    """The `tiny` teacher preset (random weights), built once per session for the teacher tests."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from defaker_edge.teacher import load_teacher

    torch.set_num_threads(1)
    return load_teacher("tiny")
