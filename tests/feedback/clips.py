"""Clip videos for the clips-campaign tests: short H.264 files made by the control loop's own
encoder (control/video.py), a moving square of a colour per clip, and a campaign of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alignloop.data.records import Comparison, Samples
from alignloop.feedback import store

COLOURS = [(230, 80, 40), (40, 160, 230), (90, 200, 60), (240, 200, 20), (200, 60, 200), (250, 250, 250)]
TASK = "Pendulum-v1: which clip does the task better?"


def write_clip(path: Path, k: int, frames: int = 30, rate: int = 20) -> Path:
    """Clip k: a square of colour k moving right over a grey field, 160 x 120 px, `frames` frames."""
    video = pytest.importorskip("alignloop.control.video")  # gymnasium + imageio-ffmpeg (the control extra)
    shots = []
    for t in range(frames):
        f = np.full((120, 160, 3), 60, np.uint8)
        x = (5 * t + 20 * k) % 130
        f[40:70, x:x + 30] = COLOURS[k % len(COLOURS)]
        shots.append(f)
    return video.write_clip_video(shots, path, rate, side=None)


def clips_campaign(db_path: Path, tmp: Path, items: int = 2, raters_per_item: int = 2, gold: int = 0,
                   gold_rate: float = 0.0, name: str = "clips") -> dict:
    """A clips campaign of `items` pairs (and `gold` gold pairs, first clip better) in the media folder
    beside `db_path`; {"digests": [per clip], "videos": [paths]}."""
    videos = [write_clip(tmp / f"clip{k}.mp4", k) for k in range(2 * (items + gold))]
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        digests = [store.add_media(s, store.default_media_dir(db_path), v) for v in videos]
        samples = [Samples(id=f"c{2 * i}|c{2 * i + 1}", prompt=TASK, responses=[f"c{2 * i}", f"c{2 * i + 1}"],
                           meta={"media": digests[2 * i:2 * i + 2]}) for i in range(items)]
        golds = [Comparison(id=f"gold{g}", prompt=TASK, responses=[f"c{2 * i}", f"c{2 * i + 1}"], ranking=[0, 1],
                            meta={"media": digests[2 * i:2 * i + 2]}) for g, i in enumerate(range(items, items + gold))]
        store.create_campaign(s, name, "clips", samples, raters_per_item=raters_per_item, gold=golds,
                              gold_rate=gold_rate, instructions="Which clip swings the pendulum up better?")
    return {"digests": digests, "videos": videos}
