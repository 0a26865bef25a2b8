"""build: too little disk is caught before a stage starts, and nothing of the stage is left."""

import shutil
from collections import namedtuple

import pytest

from edgeq import build
from edgeq.errors import EdgeqError


def test_full_disk_stops_the_stage_before_it_runs(tmp_path, tiny_model, monkeypatch):
    ctx = build.Job(
        cfg=build.BuildConfig(profile="drone"),
        profile=None,
        base=tiny_model,
        data=tmp_path / "train.jsonl",
        test_data=None,
        out=tmp_path / "out",
        state=tmp_path / "out" / ".edgeq",
        calibration=tmp_path / "calibration.json",
        system=None,
        keys={"merge": "k"},
    )
    ran = []
    monkeypatch.setitem(build.STAGES, "merge", (lambda c, w: ran.append(w), build.MergeResult))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 1 << 40, 1 << 20))  # 1 MiB free
    with pytest.raises(EdgeqError, match="not enough free disk for the merge stage"):
        build.run_stage(ctx, "merge")
    assert ran == []
    assert not (ctx.state / "merge").exists() and not (ctx.state / "merge.partial").exists()
