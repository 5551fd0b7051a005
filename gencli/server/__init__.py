"""`gencli serve`: one loaded model behind HTTP, speaking OpenAI's completions and chat
completions APIs and gencli's own.

Starlette on uvicorn: every request body is checked by gencli's settings schema, so FastAPI's
per-endpoint pydantic models would be a second schema; Starlette (which FastAPI is built on)
gives the routing, the streaming and nothing to keep in step.

The package: `app` (the routes), `explore` (the explore page at `/` and the inspection routes
behind it), `requests` (what a request asks for, checked), `responses` (OpenAI's shapes),
`scheduler` (batching), `worker` (the thread that runs the model, its queue and prefix caches),
`errors` (a refusal as OpenAI's error object).

One worker thread runs the model. Requests wait in a bounded queue (full: 503 with Retry-After)
and run one at a time, so no state is shared between them. The worker keeps the KV caches of
recent prompts (`PrefixPool`): a request takes the cache that shares the longest prefix with its
prompt and prefills only the rest, as vLLM's automatic prefix caching does, and the response says
how many prompt tokens were reused (`usage.prompt_tokens_details.cached_tokens`).
"""
