"""Videos of the control loop (control/video.py): a stored clip renders again as the frames it was
recorded with; the loop writes OUT/videos/round_NNN.mp4 every K rounds and after the last, and a
resumed run neither loses nor duplicates one; MuJoCo renders headless; missing pieces are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest

from alignloop.config import ConfigError
from alignloop.configs import ControlConfig
from alignloop.control.clips import Clips, cut_clips
from alignloop.control.envs import LearnedReward
from alignloop.control.loop import run_control
from alignloop.control.video import headless, make_render_env, render_clip, replay_frames, write_mp4

def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    with imageio.get_reader(path) as r:
        return [f for f in r], r.get_meta_data()["fps"]


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])  # Box and Discrete actions
def test_a_stored_clip_renders_again_as_the_frames_it_was_recorded_with(tmp_path, env_id):
    env = LearnedReward(make_render_env(env_id), seed=3)
    env.action_space.seed(0)
    env.recording = True
    seen: dict[int, list] = {}  # episode seed -> the frame of each step's observation, then the last
    _, info = env.reset()
    seen[info["episode_seed"]] = [env.render()]
    for _ in range(80):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        seen[info["episode_seed"]].append(env.render())
        if terminated or truncated:
            _, info = env.reset()
            seen[info["episode_seed"]] = [env.render()]
    clips = cut_clips(env.take_trajectories(), 6, 3, np.random.default_rng(0), round_=1)
    clips.save(tmp_path / "clips.npz")
    back = Clips.load(tmp_path / "clips.npz")
    replay = make_render_env(env_id)
    for k in range(3):
        frames = replay_frames(replay, int(back.seed[k]), back.replay_actions[k], int(back.start[k]))
        s = int(back.start[k])
        original = seen[int(back.seed[k])][s:s + 7]  # T = 6 observations and the frame after the last action
        assert len(frames) == 7 and all(np.array_equal(a, b) for a, b in zip(frames, original))
    path = render_clip(replay, back, 0, tmp_path / "clip.mp4")
    frames, rate = read_video(path)
    assert len(frames) == 7 and frames[0].shape == original[0].shape
    assert rate == {"Pendulum-v1": 20, "CartPole-v1": 50}[env_id]  # simulated real time: 1 / dt
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def small(out: Path, **kw) -> ControlConfig:
    return ControlConfig(out=out, env="Pendulum-v1", total_steps=768, rounds=3, labels=24, n_envs=2, n_steps=128,
                         batch_size=64, n_epochs=2, rm_epochs=3, eval_episodes=1, fragment_length=10, candidates=3,
                         **{"video_every": 2, **kw})


def test_videos_every_k_rounds_and_after_the_last_survive_a_resume(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    full = run_control(small(a))
    assert full["videos"] == ["videos/round_002.mp4", "videos/round_003.mp4"]  # K = 2 of 3 rounds, and the last
    assert sorted(p.name for p in (a / "videos").iterdir()) == ["round_002.mp4", "round_003.mp4"]
    frames, rate = read_video(a / "videos" / "round_003.mp4")
    assert len(frames) == 201 and rate == 20  # Pendulum: 200 steps of 0.05 s, and the first frame
    assert run_control(small(b, stop_at_round=3)) is None  # in round 3, after its labels
    kept = (b / "videos" / "round_002.mp4").read_bytes()
    (b / "videos" / "round_003.mp4").write_bytes(b"junk")  # as if killed after writing it, before its checkpoint
    (b / "videos" / ".round_003.tmp.mp4").write_bytes(b"half a video")  # or while writing it
    run_control(small(b, resume=True))
    assert (b / "videos" / "round_002.mp4").read_bytes() == kept  # not lost, not made again
    assert sorted(p.name for p in (b / "videos").iterdir()) == ["round_002.mp4", "round_003.mp4"]
    for name in ("round_002.mp4", "round_003.mp4"):
        fa, fb = read_video(a / "videos" / name)[0], read_video(b / "videos" / name)[0]
        assert len(fa) == len(fb) and all(np.array_equal(x, y) for x, y in zip(fa, fb))
    # videos take no random draws: the labels and metrics are those of the run without videos
    plain = run_control(small(tmp_path / "c", video_every=0))
    assert plain["videos"] == [] and not (tmp_path / "c" / "videos").exists()
    assert (a / "comparisons.jsonl").read_text() == (tmp_path / "c" / "comparisons.jsonl").read_text()
    rows = [[{k: v for k, v in json.loads(x).items() if not k.startswith("time")}
             for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, tmp_path / "c")]
    assert rows[0] == rows[1]


def test_headless_defaults_leave_what_the_user_set(monkeypatch):
    for var in ("MUJOCO_GL", "SDL_VIDEODRIVER", "PYGAME_HIDE_SUPPORT_PROMPT"):
        monkeypatch.delenv(var, raising=False)
    headless()
    assert os.environ["MUJOCO_GL"] == "egl" and os.environ["SDL_VIDEODRIVER"] == "dummy"
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    headless()
    assert os.environ["MUJOCO_GL"] == "osmesa"


def test_mujoco_renders_headless_when_mujoco_gl_is_not_set(tmp_path):
    code = "\n".join([
        "from alignloop.config import ConfigError",
        "from alignloop.control.video import frame, make_render_env",
        "env = make_render_env('InvertedPendulum-v5', ['width=64', 'height=48'])",
        "env.reset(seed=0)",
        "try:",
        "    f = frame(env)",
        "except ConfigError as err:",
        "    print('skip', err)",
        "else:",
        "    import os",
        "    print(os.environ['MUJOCO_GL'], f.shape, int(f.std() > 10))"])
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=120)  # cwd: MuJoCo writes its warnings to ./MUJOCO_LOG.TXT
    assert r.returncode == 0, r.stderr
    if r.stdout.startswith("skip"):  # no off-screen OpenGL here (.ci/run installs it)
        pytest.skip(r.stdout.strip())
    assert r.stdout.strip() == "egl (48, 64, 3) 1"  # a picture, not a blank frame


def test_missing_video_pieces_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio.v2", None)  # as if imageio were not installed
    with pytest.raises(ConfigError, match=r"^videos need imageio and imageio-ffmpeg: pip install") as err:
        write_mp4([np.zeros((4, 4, 3), np.uint8)], tmp_path / "x.mp4", 10)
    assert "\n" not in str(err.value)
