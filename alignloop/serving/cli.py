"""`alignloop serve-model`: one model behind an OpenAI-compatible chat-completions API.

Loads the model as every other command does (a registry name, a model folder, a run's LoRA
output folder merged into its base), starts the batcher's worker thread and serves the app
(serving/app.py) with uvicorn, on 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path
from typing import Literal

import click
from pydantic import Field

from alignloop.config import DEFAULT_MODEL, StageConfig, config_command


class ServeModelConfig(StageConfig):
    """`alignloop serve-model`: the model server."""

    model: str = Field(DEFAULT_MODEL, description="Model: a registry name (smollm2-135m-instruct), a local folder (a "
                                                  "full model or a LoRA adapter folder of a run) or a Hugging Face id.")
    name: str | None = Field(None, description="The model's name in the API (requests' `model`, /v1/models) "
                                               "[default: the registry name, or the folder's name].")
    host: str = Field("127.0.0.1", description="Address to listen on; anything but a loopback address serves the "
                                               "model to the network, with a warning (there is no authentication).")
    port: int = Field(8001, ge=0, le=65535, description="Port to listen on.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype: auto = float32 on CPU, bfloat16 on a GPU that has it; a half type on a "
                            "CPU without fast kernels for it is float32, with a notice.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    max_batch_size: int = Field(8, ge=1, description="Most rows (a request of n choices is n rows) decoded together; "
                                                     "requests arriving meanwhile join as rows end.")
    max_waiting: int = Field(64, ge=1, description="Requests that may wait for a place in the batch; one more is "
                                                   "answered 503 (overloaded) with Retry-After.")
    max_new_tokens_limit: int = Field(1024, ge=1, description="Most tokens a request may ask for (max_tokens); more "
                                                              "is answered 400.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens of a request that gives none (at most "
                                                           "--max-new-tokens-limit).")
    timeout_s: float = Field(120.0, gt=0, description="Seconds a request may take from its arrival; then it ends, "
                                                      "answered 504 with what was generated (a stream: an error "
                                                      "event after the text sent).")
    batch_window_ms: float = Field(5.0, ge=0, description="An idle server waits this long after a request for "
                                                          "others before it starts, so requests sent together "
                                                          "start together.")
    lora_loading: bool = Field(False, description="Open vLLM's runtime LoRA endpoints: POST /v1/load_lora_adapter "
                                                   "{lora_name, lora_path} serves a LoRA adapter folder (merged into "
                                                   "the base it records: one more copy of the weights, its own "
                                                   "worker) under lora_name; POST /v1/unload_lora_adapter "
                                                   "{lora_name} drops it. Off by default: a request names a folder "
                                                   "on this machine.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads [default: torch's own choice].")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="uvicorn log level.")


def served_name(cfg: ServeModelConfig) -> str:
    """--name, else the registry name as given, else the folder's own name."""
    from alignloop.models.registry import BUNDLED

    if cfg.name:
        return cfg.name
    if cfg.model in BUNDLED or not Path(cfg.model).expanduser().exists():
        return cfg.model
    return Path(cfg.model).expanduser().resolve().name


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdapterFolders:
    """The runtime LoRA endpoints' loader: an adapter folder is loaded as every command loads
    one (merged into the base it records) and decoded by a Batcher of its own, with the
    server's options."""

    def __init__(self, cfg: ServeModelConfig):
        self.cfg = cfg
        self.loaded: list = []

    def batcher(self, model, tokenizer):
        from alignloop.serving.batcher import Batcher

        return Batcher(model, tokenizer, max_batch_size=self.cfg.max_batch_size, max_waiting=self.cfg.max_waiting,
                       window_s=self.cfg.batch_window_ms / 1000)

    def load(self, path: str):
        from alignloop.models.loading import load_causal_lm, load_tokenizer, pick_device

        folder = Path(path).expanduser()
        if not (folder / "adapter_config.json").is_file():
            raise ValueError("not a LoRA adapter folder (it has no adapter_config.json)")
        engine = self.batcher(load_causal_lm(str(folder), self.cfg.dtype, pick_device(self.cfg.device)),
                              load_tokenizer(str(folder)))
        engine.start()
        self.loaded.append(engine)
        return engine

    def unload(self, engine) -> None:
        engine.close()
        self.loaded.remove(engine)

    def close(self) -> None:
        for engine in list(self.loaded):
            self.unload(engine)


def build_server(cfg: ServeModelConfig, model=None, tokenizer=None):
    """(uvicorn.Server, Batcher) for `cfg`; the model is loaded unless given. The batcher's
    worker starts and stops with the server."""
    import uvicorn

    from alignloop.models.loading import load_causal_lm, load_tokenizer, pick_device
    from alignloop.serving.app import Limits, create_app

    if cfg.default_max_tokens > cfg.max_new_tokens_limit:
        from alignloop.config import ConfigError

        raise ConfigError(f"options: --default-max-tokens {cfg.default_max_tokens} is more than "
                          f"--max-new-tokens-limit {cfg.max_new_tokens_limit}")
    if model is None:
        model = load_causal_lm(cfg.model, cfg.dtype, pick_device(cfg.device))
        tokenizer = load_tokenizer(cfg.model)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    adapters = AdapterFolders(cfg)
    batcher = adapters.batcher(model, tokenizer)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            batcher.close()
            adapters.close()

    limits = Limits(max_new_tokens_limit=cfg.max_new_tokens_limit, default_max_tokens=cfg.default_max_tokens,
                    timeout_s=cfg.timeout_s, max_choices=cfg.max_batch_size)
    app = create_app(batcher, served_name(cfg), limits, lifespan=lifespan,
                     adapters=adapters if cfg.lora_loading else None)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_keep_alive=30)
    return uvicorn.Server(config), batcher


def run_serve_model(cfg: ServeModelConfig) -> None:
    if not is_loopback(cfg.host):
        click.echo(f"warning: --host {cfg.host} serves the model to every machine that can reach this address, "
                   "without authentication; the default, 127.0.0.1, serves this machine only", err=True)
    server, _ = build_server(cfg)
    click.echo(f"serving {cfg.model} as '{served_name(cfg)}' on http://{cfg.host}:{cfg.port}/v1 "
               f"(OpenAI-compatible: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health)", err=True)
    server.run()  # uvicorn exits with status 1 when it cannot bind


command = config_command(ServeModelConfig, run_serve_model, "serve-model",
                         help="Serve a model with an OpenAI-compatible API (chat completions, streaming), "
                              "batching concurrent requests.")
