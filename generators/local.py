"""The `local` backend: a model running inside this process, no key and no network.

By default it runs the bundled SmolLM2-135M-Instruct GGUF with llama.cpp (llama-cpp-python); a
local Hugging Face model directory (config.json + safetensors, e.g. a fine-tune's output) runs with
transformers when that is installed.

Loading takes a while and memory, so each model is loaded once per process and shared by every
backend built with the same settings. Generation blocks a CPU for seconds, so it runs in a worker
thread, one prompt at a time per model, because a llama.cpp context is not thread-safe.

Streaming (`stream_prompt`): the worker thread hands each piece of text to the event loop as
llama.cpp makes it, choice after choice, so the first words leave after the first token rather
than after the last choice; closing the stream stops the thread at its next token.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import importlib.util
import os
import random
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from generators.base import (
    Backend,
    ChatMessage,
    Choice,
    Generation,
    NormalizedPrompt,
    SamplingParams,
    prompt_text,
    register_backend,
)
from generators.bundled import BUNDLED_MODEL_ID, bundled_model_path
from generators.chat_template import ChatTemplate
from generators.engine import LoadedModel, Sample
from generators.errors import (
    BackendNotInstalled,
    GeneratorError,
    UnsupportedRequest,
)
from generators.streaming import ChoiceDelta, StreamItem

Engine = Literal["auto", "llama_cpp", "transformers"]


def usable_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """All usable cores but one (at least one).

    llama.cpp's threads meet at a barrier after every operation of every layer, so one thread
    preempted by other work (this process's event loop and filters, or another process) stalls
    them all. On a busy 2-core machine 1 thread generated 45-55 tokens/s and 2 threads 4-8;
    leaving a core free costs little when the machine is idle and avoids that collapse.
    """
    return max(1, usable_cores() - 1)


class LocalBackend(Backend):
    """Generates with a model file or directory on this machine."""

    backend_id = "local"
    supports_completion = True
    supports_chat = True
    supports_concurrency = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        model_path: Path | None = Field(
            default=None,
            description="A .gguf file or a Hugging Face model directory; None = the bundled model.",
        )
        model_id: str | None = Field(
            default=None, description="Id reported in results; defaults to the model's name."
        )
        engine: Engine = Field(
            default="auto",
            description="auto: llama_cpp for .gguf files, transformers for directories.",
        )
        n_ctx: int = Field(
            default=2048, ge=128, description="Context window in tokens (llama.cpp)."
        )
        n_threads: int | None = Field(
            default=None, ge=1, description="CPU threads; None = all usable cores but one."
        )
        n_batch: int = Field(default=512, ge=1, description="Prompt tokens evaluated per step.")
        # llama.cpp samplers beyond the OpenAI set, with llama.cpp's defaults (top_k also keeps
        # top_p cheap: it sorts 40 candidates instead of the whole vocabulary). The transformers
        # engine ignores them.
        top_k: int = Field(default=40, ge=0, description="0 disables top-k (llama.cpp).")
        min_p: float = Field(
            default=0.05, ge=0.0, le=1.0, description="0 disables min-p (llama.cpp)."
        )
        repeat_penalty: float = Field(default=1.0, gt=0.0, description="1 disables it (llama.cpp).")
        device: str = Field(default="cpu", description="torch device for transformers models.")

    options: Options  # type: ignore[assignment]  # narrowed to this backend's options

    def __init__(self, options: BaseModel | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self._seeds = random.Random()
        opts = self.options
        self._sampler_extras = {
            "top_k": opts.top_k,
            "min_p": opts.min_p,
            "repeat_penalty": opts.repeat_penalty,
        }

    @property
    def model_path(self) -> Path:
        path = self.options.model_path
        return bundled_model_path() if path is None else path.expanduser()

    @property
    def model_id(self) -> str:
        if self.options.model_id:
            return self.options.model_id
        if self.options.model_path is None:
            return BUNDLED_MODEL_ID
        path = self.options.model_path
        return path.stem if path.suffix == ".gguf" else path.name

    def engine_kind(self) -> Literal["llama_cpp", "transformers"]:
        if self.options.engine != "auto":
            return self.options.engine
        return "transformers" if self.model_path.is_dir() else "llama_cpp"

    async def check(self) -> bool:
        """True when the model file exists and its engine is importable (nothing is loaded)."""
        try:
            path = self.model_path
        except GeneratorError:
            return False
        if not path.exists():
            return False
        module = "llama_cpp" if self.engine_kind() == "llama_cpp" else "transformers"
        return importlib.util.find_spec(module) is not None

    async def load(self) -> LoadedModel:
        """Load the model now (it is otherwise loaded on the first request) and return it."""
        return await asyncio.to_thread(self._load)

    def _load(self) -> LoadedModel:
        opts = self.options
        path = self.model_path.resolve()
        if not path.exists():
            raise BackendNotInstalled(
                f"model_path: {path} does not exist; point it at a .gguf "
                "file or a model directory, or leave it unset for the "
                "bundled model"
            )
        kind = self.engine_kind()
        threads = opts.n_threads or default_threads()
        if kind == "llama_cpp":
            key: tuple[Any, ...] = (kind, str(path), opts.n_ctx, threads, opts.n_batch)
            return _cached(key, lambda: LlamaCppModel(path, opts.n_ctx, threads, opts.n_batch))
        key = (kind, str(path), opts.device, threads)
        return _cached(key, lambda: _load_transformers(path, opts.device, threads))

    async def chat_template(self) -> ChatTemplate | None:
        return (await self.load()).chat_template()

    async def execute(
        self, prompts: list[NormalizedPrompt], params: SamplingParams
    ) -> list[Generation | GeneratorError]:
        model = await self.load()
        results: list[Generation | GeneratorError] = []
        # One prompt per thread hop: the model runs one at a time anyway, and a cancelled run
        # stops after the prompt in progress instead of after the whole batch.
        for prompt in prompts:
            seeds = self._choice_seeds(params)
            try:
                generation = await asyncio.to_thread(self._generate, model, prompt, params, seeds)
                results.append(generation)
            except Exception as exc:  # an engine crash fails this prompt, not the whole batch
                results.append(self._failure(exc))
        return results

    async def stream_prompt(
        self, prompt: NormalizedPrompt, params: SamplingParams
    ) -> AsyncGenerator[StreamItem, None]:
        """Each choice's text as it is made (llama.cpp: piece by piece; transformers: whole
        choices), then the whole `Generation`; see `generators.streaming.stream`."""
        model = await self.load()
        seeds = self._choice_seeds(params)
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[StreamItem | Exception] = asyncio.Queue()
        closed = threading.Event()

        def send(item: StreamItem | Exception) -> None:  # from the worker thread
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the loop is gone; nobody is reading
                closed.set()

        def emit(delta: ChoiceDelta) -> None:
            if closed.is_set():
                raise _StreamClosed  # unwinds the engine's loop, releasing the model
            send(delta)

        def work() -> None:
            try:
                send(self._generate(model, prompt, params, seeds, emit))
            except _StreamClosed:
                pass
            except Exception as exc:
                send(self._failure(exc))

        # Not awaited: the queue brings its results, and `closed` ends it early.
        loop.run_in_executor(None, work)
        try:
            while True:
                item = await items.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, Generation):
                    return
        finally:
            closed.set()

    def _failure(self, exc: Exception) -> GeneratorError:
        """The error to report for one prompt: the backend's own, or an engine crash wrapped."""
        if isinstance(exc, GeneratorError):
            exc.attempts = exc.attempts or 1
            return exc
        error = GeneratorError(
            f"local model {self.model_id} failed: {type(exc).__name__}: {exc}", attempts=1
        )
        error.__cause__ = exc
        return error

    def _choice_seeds(self, params: SamplingParams) -> list[int]:
        # llama-cpp-python samples with the same seed on every call without one, so each choice
        # gets its own: consecutive ones from the caller's seed, else random ones.
        if params.seed is not None:
            return [params.seed + i for i in range(params.n)]
        return [self._seeds.randrange(2**31) for _ in range(params.n)]

    def _generate(
        self,
        model: LoadedModel,
        prompt: NormalizedPrompt,
        params: SamplingParams,
        seeds: list[int],
        emit: Callable[[ChoiceDelta], None] | None = None,
    ) -> Generation:
        """All choices, one after another; with `emit`, each one's text as it is made."""
        started = time.perf_counter()
        samples: list[Sample] = []
        with model.lock:
            for index, seed in enumerate(seeds):
                samples.append(self._one_choice(model, prompt, params, seed, index, emit))
        return Generation(
            choices=[
                Choice(text=s.text, finish_reason=s.finish_reason, index=i)
                for i, s in enumerate(samples)
            ],
            # The prompt is counted once, as the OpenAI API counts it for n choices.
            prompt_tokens=samples[0].prompt_tokens,
            completion_tokens=sum(s.completion_tokens for s in samples),
            latency_s=time.perf_counter() - started,
            model=self.model_id,
            backend=self.backend_id,
            attempts=1,
            usage_estimated=any(s.usage_estimated for s in samples),
        )

    def _one_choice(
        self,
        model: LoadedModel,
        prompt: NormalizedPrompt,
        params: SamplingParams,
        seed: int,
        index: int,
        emit: Callable[[ChoiceDelta], None] | None,
    ) -> Sample:
        extra = self._sampler_extras
        if emit is not None and isinstance(model, LlamaCppModel):
            sample = model.stream(
                prompt, params, seed, extra, lambda text: emit(ChoiceDelta(index, text))
            )
        elif isinstance(prompt, str):
            sample = model.complete(prompt, params, seed, extra)
        else:
            sample = model.chat(prompt, params, seed, extra)
        if emit is not None:
            unsent = "" if isinstance(model, LlamaCppModel) else sample.text
            emit(ChoiceDelta(index, unsent, sample.finish_reason))
        return sample


class _StreamClosed(Exception):
    """The stream's reader went away; raised inside the engine's loop to stop generating."""


_MODELS: dict[tuple[Any, ...], LoadedModel] = {}
_LOADING: dict[tuple[Any, ...], threading.Lock] = {}
_REGISTRY_LOCK = threading.Lock()


def _cached(key: tuple[Any, ...], load: Any) -> LoadedModel:
    """Load a model once per process; concurrent first requests wait for the same load."""
    with _REGISTRY_LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
        loading = _LOADING.setdefault(key, threading.Lock())
    with loading:
        model = _MODELS.get(key)
        if model is None:
            model = load()
            with _REGISTRY_LOCK:
                _MODELS[key] = model
        return model


def unload_models() -> None:
    """Free every cached model (tests, or to free memory after switching models)."""
    with _REGISTRY_LOCK:
        models = list(_MODELS.values())
        _MODELS.clear()
        _LOADING.clear()
    for model in models:
        close = getattr(model, "close", None)
        if close is not None:
            with model.lock:
                close()


# Free llama.cpp contexts while the interpreter is still whole; left to garbage collection at
# exit, llama-cpp-python's finalizer runs after its module globals are gone and prints errors.
atexit.register(unload_models)


class LlamaCppModel:
    """A GGUF model in llama.cpp; chat uses the chat template stored in the GGUF file."""

    def __init__(
        self,
        path: Path,
        n_ctx: int,
        n_threads: int,
        n_batch: int,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise BackendNotInstalled(
                f"running {path.name} needs llama-cpp-python; install the project with "
                f"pip install -e '.[local]' (it pins llama-cpp-python) ({exc})"
            ) from exc
        self.lock = threading.Lock()
        self.n_ctx = n_ctx
        self._grammars: dict[str, Any] = {}  # GBNF text -> compiled LlamaGrammar
        self.llama = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_batch=n_batch,
            verbose=False,
        )

    def close(self) -> None:
        self.llama.close()

    def chat_template(self) -> ChatTemplate | None:
        return self._chat_template

    @functools.cached_property
    def _chat_template(self) -> ChatTemplate | None:
        source = self.llama.metadata.get("tokenizer.chat_template")
        if not source:
            return None

        def token(token_id: int) -> str:
            return self.llama.detokenize([token_id], special=True).decode("utf-8", "replace")

        return ChatTemplate(
            source, bos_token=token(self.llama.token_bos()), eos_token=token(self.llama.token_eos())
        )

    def _grammar(self, params: SamplingParams) -> dict[str, Any]:
        """A constrained answer (the judge's) as llama.cpp's grammar, compiled once per text."""
        if params.structured is None:
            return {}
        source = params.structured.grammar
        grammar = self._grammars.get(source)
        if grammar is None:
            from llama_cpp import LlamaGrammar

            grammar = LlamaGrammar.from_string(source, verbose=False)
            self._grammars[source] = grammar
        return {"grammar": grammar}

    def _kwargs(
        self, params: SamplingParams, seed: int, extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            **self._grammar(params),
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "stop": list(params.stop),
            "seed": seed,
            **extra,
        }

    def complete(
        self, prompt: str, params: SamplingParams, seed: int, extra: Mapping[str, Any]
    ) -> Sample:
        try:
            out = self.llama.create_completion(prompt, **self._kwargs(params, seed, extra))
        except ValueError as exc:
            raise self._too_long(exc) from exc
        choice = out["choices"][0]  # type: ignore[index]
        return self._sample(choice["text"], choice["finish_reason"], out["usage"])  # type: ignore[index,arg-type]

    def chat(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        seed: int,
        extra: Mapping[str, Any],
    ) -> Sample:
        try:
            out = self.llama.create_chat_completion(
                [m.model_dump() for m in messages],  # type: ignore[misc]
                **self._kwargs(params, seed, extra),
            )
        except ValueError as exc:
            raise self._too_long(exc) from exc
        choice = out["choices"][0]  # type: ignore[index]
        text = choice["message"]["content"] or ""
        return self._sample(text, choice["finish_reason"], out["usage"])  # type: ignore[index,arg-type]

    def stream(
        self,
        prompt: NormalizedPrompt,
        params: SamplingParams,
        seed: int,
        extra: Mapping[str, Any],
        on_text: Callable[[str], None],
    ) -> Sample:
        """One choice, handing each piece of text to `on_text` as llama.cpp makes it (pieces
        that may begin a stop string are held back until they do not)."""
        kwargs = {**self._kwargs(params, seed, extra), "stream": True}
        parts: list[str] = []
        finish: str | None = None
        try:
            if isinstance(prompt, str):
                chunks: Any = self.llama.create_completion(prompt, **kwargs)
            else:
                chunks = self.llama.create_chat_completion(
                    [m.model_dump() for m in prompt],  # type: ignore[misc]
                    **kwargs,
                )
            for chunk in chunks:  # each chunk is made when it is asked for
                choice = chunk["choices"][0]
                piece = choice["text"] if "text" in choice else choice["delta"].get("content")
                if piece:
                    parts.append(piece)
                    on_text(piece)
                finish = choice.get("finish_reason") or finish
        except ValueError as exc:
            raise self._too_long(exc) from exc
        text = "".join(parts)
        sample = self._sample(text, finish, self._streamed_usage(prompt, text))
        sample.usage_estimated = True
        return sample

    def _streamed_usage(self, prompt: NormalizedPrompt, text: str) -> dict[str, int]:
        """llama.cpp reports no usage when it streams: count the tokens of the prompt as the
        model reads it (its chat template applied) and of the answer, within a token or two."""
        shown = prompt if isinstance(prompt, str) else prompt_text(prompt)
        template = self.chat_template()
        if template is not None and not isinstance(prompt, str):
            with contextlib.suppress(GeneratorError):  # the engine's own formatter took it
                shown = template.render(
                    [m.model_dump() for m in prompt], add_generation_prompt=True
                )
        return {
            "prompt_tokens": len(self.llama.tokenize(shown.encode(), add_bos=False, special=True)),
            "completion_tokens": len(self.llama.tokenize(text.encode(), add_bos=False)),
        }

    def _too_long(self, exc: ValueError) -> GeneratorError:
        return UnsupportedRequest(
            f"the prompt does not fit the local model's context window (n_ctx={self.n_ctx}): "
            f"{exc}; shorten the prompt or raise n_ctx"
        )

    @staticmethod
    def _sample(text: str, finish_reason: str | None, usage: Mapping[str, Any]) -> Sample:
        return Sample(
            text=text,
            finish_reason="length" if finish_reason == "length" else "stop",
            prompt_tokens=int(usage["prompt_tokens"]),
            completion_tokens=int(usage["completion_tokens"]),
        )


def _load_transformers(path: Path, device: str, n_threads: int) -> LoadedModel:
    # Imported here: transformers and torch are optional (the `train` extra) and slow to import.
    from generators.hf import TransformersModel

    return TransformersModel(path, device=device, n_threads=n_threads)


register_backend("local", LocalBackend)
