"""The retention chain: stage score files -> per-domain AUC, paired differences, retention, size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from defaker_edge.cli import main
from defaker_edge.distill.chain import ChainConfig, Stage, chain_report, parse_stage
from defaker_edge.errors import ArtifactError, DefakerError
from defaker_edge.metrics import image_auc


def _scores(path, keys, labels, domains, probs, f1s, cut=0.5):
    imgs = []
    for k, y, d, p, f in zip(keys, labels, domains, probs, f1s):
        px = {"pixel_f1": f, "pixel_f1_best": min(1.0, f + 0.1), "pixel_iou": f / 2, "pixel_auc": 0.7} if y else None
        imgs.append({"key": k, "label": int(y), "domain": d, "kind": "splice" if y else "authentic",
                     "fake_prob": float(p), "pixel": px})
    path.write_text(json.dumps({"step": None, "pixel_cut": cut, "heldout": "h.jsonl", "images": imgs}))
    return str(path)


def test_chain_retention_and_paired_difference(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    keys = [f"images/{i}.jpg" for i in range(n)]
    y = rng.integers(0, 2, n)
    dom = np.where(np.arange(n) % 2, "natural", "document")
    t = y * 0.6 + rng.random(n) * 0.8  # the teacher separates the classes better than ...
    s = y * 0.3 + rng.random(n) * 0.8  # ... the student
    tf1 = np.where(y, 0.4, 0.0)
    sf1 = np.where(y, 0.3, 0.0)
    a = _scores(tmp_path / "t.json", keys, y, dom, t, tf1)
    b = _scores(tmp_path / "s.json", keys, y, dom, s, sf1, cut=0.3)
    res = chain_report(ChainConfig([Stage("teacher", a), Stage("student", b, ms_1024=12.5)],
                                   out=str(tmp_path / "c.json"), markdown=str(tmp_path / "c.md"), reps=300))
    pytest.importorskip("matplotlib")
    from defaker_edge.bench.plots import chain_plot

    png = chain_plot(res.report, tmp_path / "chain.png")  # the teacher has no ms: left out, named
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    st = res.report["stages"]
    ta, sa = image_auc(y, t), image_auc(y, s)
    assert st[0]["slices"]["all"]["image_auc"]["value"] == pytest.approx(ta)
    al = st[1]["slices"]["all"]
    assert al["retention"]["image_auc"] == pytest.approx(sa / ta, abs=1e-4)
    assert al["retention"]["pixel_f1"] == pytest.approx(0.75, abs=1e-4)
    d = al["auc_vs_teacher"]
    assert d["value"] == pytest.approx(sa - ta) and d["lo"] <= d["value"] <= d["hi"] and d["hi"] < 0
    nat = st[1]["slices"]["natural"]
    m = dom == "natural"
    assert nat["n"] == m.sum() and nat["image_auc"]["value"] == pytest.approx(image_auc(y[m], s[m]))
    assert st[1]["pixel_cut"] == 0.3 and st[1]["ms_1024"] == 12.5
    md = (tmp_path / "c.md").read_text()
    assert "| student |" in md and "natural AUC" in md and json.loads((tmp_path / "c.json").read_text())["n_images"] == n


def test_chain_refuses_stages_on_other_images_and_bad_specs(tmp_path):
    a = _scores(tmp_path / "t.json", ["a", "b"], [0, 1], ["natural"] * 2, [0.1, 0.9], [0, 0.5])
    b = _scores(tmp_path / "s.json", ["a", "c"], [0, 1], ["natural"] * 2, [0.1, 0.9], [0, 0.5])
    with pytest.raises(ArtifactError, match="other images"):
        chain_report(ChainConfig([Stage("teacher", a), Stage("s", b)]))
    with pytest.raises(DefakerError):
        chain_report(ChainConfig([Stage("teacher", a)]))
    assert parse_stage("int8=x.json,ms=3.5,note=INT8-CPU").ms_1024 == 3.5
    for bad in ("noequals", "s=x.json,ms=fast", "s=x.json,colour=red"):
        with pytest.raises(DefakerError):
            parse_stage(bad)


def test_train_score_and_chain_cli(tiny_data, tmp_path, capsys):
    """`train score` writes a stage's score file for any student dir; `train chain` joins them, with size."""
    torch = pytest.importorskip("torch")
    from defaker_edge.student import StudentConfig, build_student, save_student

    torch.manual_seed(0)
    for name in ("t", "s"):
        cfg = StudentConfig.from_preset("block-dct-s", tile=128)
        save_student(build_student(cfg), cfg, tmp_path / name)
        assert main(["train", "score", "--student", str(tmp_path / name), "--heldout", str(tiny_data),
                     "--eval-max", "6", "--pixel-threshold", "0.4", "--out", str(tmp_path / f"{name}.json")]) == 0
    capsys.readouterr()
    sc = json.loads((tmp_path / "s.json").read_text())
    assert len(sc["images"]) == 6 and sc["pixel_cut"] == 0.4
    rc = main(["train", "chain", "--stage", f"teacher={tmp_path / 't.json'},model={tmp_path / 't'}",
               "--stage", f"pruned={tmp_path / 's.json'},model={tmp_path / 's'}", "--reps", "50",
               "--out", str(tmp_path / "c.json")])
    assert rc == 0 and "| pruned |" in capsys.readouterr().out
    st = json.loads((tmp_path / "c.json").read_text())["stages"]
    assert st[0]["params"] > 0 and st[1]["params_vs_teacher"] == 1.0 and st[1]["gmac_per_tile"] > 0
    assert main(["train", "score", "--student", str(tmp_path / "s"), "--heldout", str(tiny_data),
                 "--pixel-threshold", "2", "--out", str(tmp_path / "x.json")]) == 2
    # any stage can be scored at the package's tile size (the student is fully convolutional)
    assert main(["train", "score", "--student", str(tmp_path / "s"), "--heldout", str(tiny_data), "--eval-max", "2",
                 "--tile", "160", "--out", str(tmp_path / "t160.json")]) == 0
    assert json.loads((tmp_path / "t160.json").read_text())["tile"] == 160
    assert main(["train", "score", "--student", str(tmp_path / "s"), "--heldout", str(tiny_data),
                 "--tile", "100", "--out", str(tmp_path / "x.json")]) == 2
