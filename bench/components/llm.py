"""Language-model backends: an OpenAI-compatible chat endpoint, or a local transformers LM.

:class:`OpenAIChatModel` posts to ``{base_url}/chat/completions`` (OpenAI, or a local server
that speaks the same API: vLLM, llama.cpp's ``llama-server``, Ollama, LM Studio, ...). The key
is read from the environment variable ``api_key_env`` (default ``OPENAI_API_KEY``; optional for
local servers). Requests run ``concurrency`` at a time, each with a ``timeout``; 429 and 5xx
answers and dropped connections are retried ``max_retries`` times with exponential backoff.
Every failure is a :class:`~bench.components.base.ComponentError` naming the URL, the status
and the server's message.

:class:`HFCausalLM` runs a causal LM from a hub id or a local directory (``save_pretrained``)
with left-padded batches; the tokenizer's chat template renders the chat when it has one,
otherwise ``User: ... / Assistant:`` plain text.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.components.base import (
    ComponentError,
    Prompt,
    as_messages,
    is_local,
    model_revision,
    render_chat,
    require_hub_weights,
    torch_dtype,
)
from bench.environment import resolve_device

log = logging.getLogger(__name__)

#: The chat model the original DnD code calls (``DnD_models.py``; its README says GPT-3.5).
DND_CHAT_MODEL = "gpt-4-0125-preview"
OPENAI_BASE_URL = "https://api.openai.com/v1"
_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAIChatModel:
    """One chat completion per prompt from an OpenAI-compatible endpoint (module docstring)."""

    def __init__(
        self,
        *,
        base_url: str = OPENAI_BASE_URL,
        model: str = DND_CHAT_MODEL,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.3,
        max_tokens: int = 64,
        seed: int | None = 0,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 8,
    ):
        if not str(base_url).startswith(("http://", "https://")):
            raise ComponentError(
                f"Expected an http(s) base URL for the language model, got {base_url!r} "
                "(e.g. http://127.0.0.1:8000/v1 for a local vLLM server)."
            )
        self.base_url = str(base_url).rstrip("/")
        self.model = str(model)
        self.api_key_env = api_key_env
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.seed = seed
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.concurrency = max(1, int(concurrency))
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        self._local = host in ("localhost", "::1") or host.startswith("127.")
        # Local servers are reached directly, whatever the proxy settings say.
        handlers = [urllib.request.ProxyHandler({})] if self._local else []
        self._opener = urllib.request.build_opener(*handlers)

    def check(self) -> None:
        """The API key when the endpoint needs one (whether the server answers is found only
        when it is asked)."""
        self._headers()

    def identity(self) -> dict[str, Any]:
        return {
            "name": f"openai-chat:{self.model}",
            "revision": self.model,
            "base_url": self.base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif "api.openai.com" in self.base_url:
            raise ComponentError(
                f"The language model {self.base_url} needs an API key; set the environment "
                f"variable {self.api_key_env}, or point language_model.base_url at a local "
                "OpenAI-compatible server (vLLM, llama.cpp) or use language_model=hf|synthetic."
            )
        return headers

    def complete(self, prompts: Sequence[Prompt]) -> list[str]:
        chats = [as_messages(p) for p in prompts]
        if not chats:
            return []
        headers = self._headers()
        if len(chats) == 1 or self.concurrency == 1:
            return [self._one(c, headers) for c in chats]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(chats))) as pool:
            return list(pool.map(lambda c: self._one(c, headers), chats))

    def _one(self, messages: list[dict[str, str]], headers: dict[str, str]) -> str:
        url = f"{self.base_url}/chat/completions"
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            payload["seed"] = int(self.seed)
        body = json.dumps(payload).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    data = resp.read()
            except urllib.error.HTTPError as e:
                detail = _error_text(e)
                last = f"HTTP {e.code}: {detail}"
                if e.code in _RETRY_STATUS:
                    continue
                raise ComponentError(
                    f"The language model at {url} refused the request ({last}). "
                    "Check language_model.model, base_url and the API key."
                ) from e
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(e).__name__}: {reason}"
                continue
            return _content(data, url)
        raise ComponentError(
            f"The language model at {url} did not answer after {self.max_retries + 1} attempts "
            f"(last: {last}). Is the server running and reachable? Timeout per request: "
            f"{self.timeout:g} s (language_model.timeout)."
        )


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read().decode("utf-8", "replace")
    except Exception:  # the body is a courtesy; the status says enough
        return str(e.reason)
    try:
        err = json.loads(raw).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    except (ValueError, AttributeError):
        pass
    return raw[:300] or str(e.reason)


def _content(data: bytes, url: str) -> str:
    try:
        content = json.loads(data)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ComponentError(
            f"Expected an OpenAI chat completion from {url} "
            f"({{'choices': [{{'message': {{'content': ...}}}}]}}), got {data[:200]!r}."
        ) from e
    if not isinstance(content, str):
        raise ComponentError(f"Expected text content from {url}, got {content!r}.")
    return content.strip()


class HFCausalLM:
    """Greedy (or seeded sampling) chat answers of a local transformers causal LM."""

    def __init__(
        self,
        *,
        model: str,
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        max_new_tokens: int = 32,
        min_new_tokens: int = 0,
        temperature: float = 0.0,
        seed: int = 0,
        batch_size: int = 8,
    ):
        self.model_id = str(model)
        self.min_new_tokens = int(min_new_tokens)
        self.revision = revision
        self.device = resolve_device(device)
        self.dtype = dtype
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self._model: Any = None
        self._tok: Any = None
        self._revision: str | None = None

    def check(self) -> None:
        """Offline, the weights must be in the local cache (or ``model`` a local directory)."""
        if not is_local(self.model_id):
            require_hub_weights(self.model_id, self.revision, "language_model.model")

    def identity(self) -> dict[str, Any]:
        if self._revision is None:
            self._revision = model_revision(self.model_id, self.revision)
        return {
            "name": f"hf-causal-lm:{self.model_id}",
            "revision": self._revision,
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            name = os.path.expanduser(self.model_id) if is_local(self.model_id) else self.model_id
            try:
                tok = AutoTokenizer.from_pretrained(name, revision=self.revision or "main")
                model = AutoModelForCausalLM.from_pretrained(
                    name,
                    revision=self.revision or "main",
                    dtype=torch_dtype(self.dtype, self.device),
                )
            except (OSError, ValueError) as e:
                raise ComponentError(
                    f"Could not load the language model '{self.model_id}': {e}. Pass a local "
                    "directory (language_model.model=PATH) or download it where there is a "
                    f"network (`huggingface-cli download {self.model_id}`)."
                ) from e
            tok.padding_side = "left"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            loaded: Any = model
            self._model, self._tok = loaded.to(self.device).eval(), tok
        return self._model, self._tok

    def _text(self, messages: list[dict[str, str]]) -> str:
        tok = self._tok
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return render_chat(messages)

    def complete(self, prompts: Sequence[Prompt]) -> list[str]:
        import torch

        model, tok = self._load()
        texts = [self._text(as_messages(p)) for p in prompts]
        out: list[str] = []
        sample = self.temperature > 0
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            kwargs: dict[str, Any] = {
                "max_new_tokens": self.max_new_tokens,
                "min_new_tokens": self.min_new_tokens,
                "do_sample": sample,
            }
            if sample:
                kwargs["temperature"] = self.temperature
                torch.manual_seed(self.seed + start)
            with torch.inference_mode():
                ids = model.generate(**enc, pad_token_id=tok.pad_token_id, **kwargs)
            new = ids[:, enc["input_ids"].shape[1] :]
            out.extend(_first_line(t) for t in tok.batch_decode(new, skip_special_tokens=True))
        return out


def _first_line(text: str) -> str:
    """The answer without what a base model rambles on with ("\\nUser: ...")."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""
