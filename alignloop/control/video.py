"""Videos of the control loop: mp4 files of the policy's episodes and of stored clips.

Frames come from the environment itself (`render_mode="rgb_array"`): classic-control tasks draw
with pygame, MuJoCo tasks through OpenGL, which on a machine without a display needs an
off-screen backend, chosen when mujoco is first imported. `headless()` (called by the loop before
it makes any environment, when it is to write videos) picks one unless the user has:
MUJOCO_GL=egl (Mesa's EGL: the Debian packages `envs.OPENGL_PACKAGES`), and
SDL_VIDEODRIVER=dummy for pygame. Files are encoded with imageio + imageio-ffmpeg (H.264, the ffmpeg binary ships in
the imageio-ffmpeg wheel), written to a temporary name and renamed into place.

    policy_frames(env, agent, seed)              one deterministic episode from reset(seed)
    replay_frames(env, seed, actions, start)     a clip again: reset(seed), its episode's actions
    render_clip(env, clips, i, path)             clip i of a `Clips` batch as an mp4
    write_mp4(frames, path, fps)                 frames (T, H, W, 3) uint8 -> path
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


def write_mp4(frames: list[np.ndarray], path: Path, rate: int) -> Path:
    """`frames` (each `(H, W, 3)` uint8) as an H.264 mp4 at `rate` frames per second, written to a
    temporary file and renamed to `path`."""
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise ConfigError(f"videos need imageio and imageio-ffmpeg: {EXTRA}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:  # macro_block_size 2: odd sizes grow by a pixel (yuv420p needs even ones), no other resizing
        writer = imageio.get_writer(tmp, fps=rate, codec="libx264", quality=7, macro_block_size=2,
                                    ffmpeg_log_level="error")
    except (ImportError, RuntimeError, ValueError) as err:  # no imageio-ffmpeg (no ffmpeg binary, no backend)
        raise ConfigError(f"videos need imageio-ffmpeg ({str(err).splitlines()[0]}): {EXTRA}") from None
    with writer:
        for f in frames:
            writer.append_data(f)
    tmp.replace(path)
    return path


def render_clip(env: gym.Env, clips: Clips, index: int, path: Path) -> Path:
    """Clip `index` of `clips` rendered again (from its episode seed and actions) into an mp4;
    `env` must have render_mode="rgb_array" (`make_render_env`)."""
    frames = replay_frames(env, int(clips.seed[index]), clips.replay_actions[index], int(clips.start[index]))
    return write_mp4(frames, path, fps(env))
