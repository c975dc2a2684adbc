"""The model server: an OpenAI-compatible chat-completions API over alignloop's own generation,
and the client that samples from such a server (--generation-url).

wire.py (the wire format) and jobs.py (what a request asks the generator) import no torch, so
the chat app reuses them; batcher.py decodes; app.py is the web app; cli.py `serve-model`.
client.py (no torch either) talks to any OpenAI-compatible server; remote.py turns its answers
into the `Generations` that generate, evaluate and PPO use, and pushes PPO's adapter.
"""
