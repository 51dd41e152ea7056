"""`launch serve`: a run's model behind an OpenAI-compatible API (completions with fill-in-the-middle, chat, models)
and a page to try it, for editors and OpenAI clients. The launcher (launchers/cli/serve.py) checks the request and
execs `python -m jobs.serve` (__main__.py), which loads the model and serves: protocol.py (request checks, response
shapes, stop strings), prompts.py (FIM and chat prompts), engine.py (transformers generation), vllm_server.py (vLLM's
own server as the engine), api.py (HTTP), page.html."""
