"""Videos of the control loop: mp4 files of the policy's episodes and of stored clips (the
clips people compare in a `clips` campaign: human.py).

Frames come from the environment itself (`render_mode="rgb_array"`): classic-control tasks draw
with pygame, MuJoCo tasks through OpenGL, which on a machine without a display needs an
off-screen backend, chosen when mujoco is first imported. `headless()` (called by the loop before
it makes any environment, when it is to write videos) picks one unless the user has:
MUJOCO_GL=egl (Mesa's EGL: the Debian packages `envs.OPENGL_PACKAGES`), and
SDL_VIDEODRIVER=dummy for pygame. Files are encoded with imageio + imageio-ffmpeg (H.264, the ffmpeg binary ships in
the imageio-ffmpeg wheel; the index at the front, `+faststart`, so a browser starts playing before
the whole file is in), written to a temporary name and renamed into place.

    policy_frames(env, agent, seed)              one deterministic episode from reset(seed)
    replay_frames(env, seed, actions, start)     a clip again: reset(seed), its episode's actions
    render_clip(env, clips, i, path)             clip i of a `Clips` batch as an mp4
    write_mp4(frames, path, fps)                 frames (T, H, W, 3) uint8 -> path
    write_clip_video(frames, path, fps, side)    the same for people: at most `side` pixels on the
                                                 longer side and MAX_CLIP_SECONDS long; H.264 mp4,
                                                 else VP9 WebM where this ffmpeg has no libx264
"""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np

from alignloop.config import ConfigError
from alignloop.control.clips import Clips
from alignloop.control.envs import make_env, opengl_error

VIDEOS = "videos"  # OUT/videos/round_NNN.mp4
EXTRA = "pip install -c requirements.lock -e '.[control]'"
MAX_CLIP_SECONDS = 10.0  # a clip shown to people (the paper's are 1-2 s)
H264, VP9 = ("libx264", ".mp4"), ("libvpx-vp9", ".webm")
CLIP_CODECS = (H264, VP9)  # in order of preference: every browser plays H.264; VP9 WebM the fallback


def headless() -> None:
    """Off-screen rendering defaults, each only where the user has not set it."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


def video_path(out: Path, round_: int) -> Path:
    return Path(out) / VIDEOS / f"round_{round_:03d}.mp4"


def make_render_env(env_id: str, options: list[str] = ()) -> gym.Env:
    """The environment with `render_mode="rgb_array"`, headless."""
    headless()
    return make_env(env_id, options, render_mode="rgb_array")


def fps(env: gym.Env) -> int:
    """Frames per second that play an episode in simulated real time: 1 / the env's time step
    (`dt`, or `tau` in classic control: Pendulum 20, MuJoCo tasks their `render_fps`), else its
    `render_fps`, else 30."""
    dt = getattr(env.unwrapped, "dt", None) or getattr(env.unwrapped, "tau", None)
    rate = 1.0 / dt if dt else env.metadata.get("render_fps") or 30
    return max(1, round(rate))


def frame(env: gym.Env) -> np.ndarray:
    """One `(H, W, 3)` uint8 frame, or a one-line ConfigError when the renderer is missing."""
    try:
        image = env.render()
    except gym.error.DependencyNotInstalled as err:
        raise ConfigError(f"rendering {env.spec.id if env.spec else env}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # MuJoCo's FatalError, PyOpenGL's errors: no OpenGL context could be made
        if opengl_error(err) is err:
            raise
        raise opengl_error(err) from None
    if image is None:
        raise ConfigError("the environment rendered nothing: it needs render_mode='rgb_array'")
    return np.asarray(image, dtype=np.uint8)


def env_action(space: gym.Space, action: np.ndarray):
    """A stored action row (float32, Discrete as one index) as the env takes it."""
    if isinstance(space, gym.spaces.Discrete):
        return int(np.asarray(action).reshape(-1)[0])
    return np.asarray(action, dtype=space.dtype).reshape(space.shape)


def policy_frames(env: gym.Env, agent, seed: int) -> tuple[list[np.ndarray], float]:
    """(frames, true return) of one episode of the agent's deterministic policy from reset(seed):
    the first observation's frame, then one after each step (T + 1 frames for T steps)."""
    obs, _ = env.reset(seed=seed)
    frames, total, done = [frame(env)], 0.0, False
    while not done:
        action, _ = agent.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, _ = env.step(action)
        frames.append(frame(env))
        total += float(reward)
        done = terminated or truncated
    return frames, total


def replay_frames(env: gym.Env, seed: int, actions: np.ndarray, start: int) -> list[np.ndarray]:
    """The frames of a stored clip: reset(seed), then its episode's `(start + T, A)` actions; the
    frame of each step's observation from step `start` on (T frames: what the labeller judged),
    then the frame after the clip's last action (T + 1 in all)."""
    env.reset(seed=int(seed))
    frames = []
    for t, action in enumerate(actions):
        if t >= start:
            frames.append(frame(env))
        env.step(env_action(env.action_space, action))
    frames.append(frame(env))
    return frames


def scaled_size(height: int, width: int, side: int | None) -> tuple[int, int] | None:
    """(width, height), even, with the longer side `side`, for frames larger than that; None to keep them."""
    if not side or max(height, width) <= side:
        return None
    f = side / max(height, width)
    return max(2, round(width * f / 2) * 2), max(2, round(height * f / 2) * 2)


def _encode(frames: list[np.ndarray], path: Path, rate: int, codec: str, side: int | None) -> Path:
    """Encode into a temporary file beside `path`, then rename it to `path`."""
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise ConfigError(f"videos need imageio and imageio-ffmpeg: {EXTRA}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    size = scaled_size(*np.asarray(frames[0]).shape[:2], side)
    params = ["-vf", f"scale={size[0]}:{size[1]}:flags=area"] if size else []
    params += ["-movflags", "+faststart"] if path.suffix == ".mp4" else []
    try:  # macro_block_size 2: odd sizes grow by a pixel (yuv420p needs even ones), no other resizing
        writer = imageio.get_writer(tmp, fps=rate, codec=codec, quality=7, macro_block_size=2,
                                    ffmpeg_log_level="error", output_params=params)
    except (ImportError, RuntimeError, ValueError) as err:  # no imageio-ffmpeg (no ffmpeg binary, no backend)
        raise ConfigError(f"videos need imageio-ffmpeg ({str(err).splitlines()[0]}): {EXTRA}") from None
    try:
        with writer:
            for f in frames:
                writer.append_data(f)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path


def write_mp4(frames: list[np.ndarray], path: Path, rate: int) -> Path:
    """`frames` (each `(H, W, 3)` uint8) as an H.264 mp4 at `rate` frames per second, written to a
    temporary file and renamed to `path`."""
    return _encode(frames, path, rate, H264[0], None)


def write_clip_video(frames: list[np.ndarray], path: Path, rate: int, side: int | None,
                     codecs: tuple[tuple[str, str], ...] = CLIP_CODECS) -> Path:
    """A clip for people: `path` with the suffix of the first codec this ffmpeg encodes (H.264
    .mp4, else VP9 .webm), at most `side` pixels on its longer side; a clip longer than
    MAX_CLIP_SECONDS is a ConfigError. Returns the path written."""
    seconds = len(frames) / rate
    if seconds > MAX_CLIP_SECONDS:
        raise ConfigError(f"a clip of {len(frames)} frames at {rate} frames/s lasts {seconds:.1f} s; clips shown to "
                          f"people last at most {MAX_CLIP_SECONDS:g} s (a shorter --fragment-length)")
    failures = []
    for codec, suffix in codecs:
        try:
            return _encode(frames, Path(path).with_suffix(suffix), rate, codec, side)
        except (OSError, RuntimeError) as err:  # this ffmpeg cannot encode `codec`: the next one
            failures.append(f"{codec}: {str(err).strip().splitlines()[-1][:160] if str(err).strip() else type(err).__name__}")
    raise ConfigError(f"no clip video could be encoded ({'; '.join(failures)}): {EXTRA}")


def render_clip(env: gym.Env, clips: Clips, index: int, path: Path, side: int | None = None) -> Path:
    """Clip `index` of `clips` rendered again (from its episode seed and actions) into an mp4;
    `env` must have render_mode="rgb_array" (`make_render_env`). With `side`, the video people
    are shown (`write_clip_video`: bounded size and length; the path it returns may end .webm)."""
    frames = replay_frames(env, int(clips.seed[index]), clips.replay_actions[index], int(clips.start[index]))
    if side is not None:
        return write_clip_video(frames, path, fps(env), side)
    return write_mp4(frames, path, fps(env))
