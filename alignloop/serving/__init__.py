"""The model server: an OpenAI-compatible chat-completions API over alignloop's own generation.

wire.py (the wire format) and jobs.py (what a request asks the generator) import no torch, so
the chat app reuses them; batcher.py decodes; app.py is the web app; cli.py `serve-model`.
"""
