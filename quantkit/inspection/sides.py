"""The two sides every comparison has: a reference (the source tokenizer in transformers,
or, without a source, an independent reading of the artifact's own files) and the runtime
that will load the artifact (llama.cpp through llama-cpp-python for a GGUF, transformers
for a safetensors folder).

Each side renders a chat template by name for a battery conversation and tokenizes text.
A template that tries to leave the Jinja sandbox raises RenderFailure(security=True), one
that runs past the render limits (quantkit.formats.template_limits: time, size)
RenderFailure(limit=True); the comparisons report it and never hand that template to
another renderer. transformers and llama-cpp-python render under the same limits
(chat_template.foreign_render), so no side can hang an inspection.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..formats.chat_template import TemplateLimitError, foreign_render
from ..formats.gguf_read import chat_templates
from .battery import Conversation


class RenderFailure(Exception):
    """A template refused (raise_exception) or failed to render a conversation;
    `security`: it tried to leave the sandbox, `limit`: it ran past a render limit."""

    def __init__(self, message: str, *, security: bool = False, limit: bool = False) -> None:
        super().__init__(message)
        self.security = security
        self.limit = limit


def _failure(exc: Exception) -> RenderFailure:
    from jinja2.exceptions import SecurityError

    cause: BaseException | None = exc
    while cause is not None:  # transformers and we wrap jinja's error in our own
        if isinstance(cause, SecurityError):
            return RenderFailure(f"tried to leave the Jinja sandbox: {cause}", security=True)
        if isinstance(cause, TemplateLimitError):
            return RenderFailure(cause.reason, limit=True)
        cause = cause.__cause__
    return RenderFailure(f"{type(exc).__name__}: {exc}")


class Side:
    """Interface; `encode` returns None when the side has no tokenizer of its own."""

    label: str = ""
    templates: dict[str, str]

    def render(self, name: str, conv: Conversation) -> str:
        raise NotImplementedError

    def encode(self, text: str, *, add_special: bool = False) -> list[int] | None:
        return None

    def piece(self, token_id: int) -> str:
        return str(token_id)


class TransformersSide(Side):
    """A tokenizer folder loaded by transformers (AutoTokenizer), rendering with
    apply_chat_template: what transformers, vLLM and TGI users get."""

    def __init__(self, folder: Path, label: str) -> None:
        from transformers import AutoTokenizer

        self.label = label
        self._use(AutoTokenizer.from_pretrained(str(folder)))

    def _use(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        value = tokenizer.chat_template
        if isinstance(value, dict):
            self.templates = dict(value)
        else:
            self.templates = {"default": value} if value else {}

    def _apply(self, name: str, template: str, conv: Conversation) -> str:
        # The template text itself, not its name: a lone string template would take
        # "default" for template source.
        return self.tokenizer.apply_chat_template(
            copy.deepcopy(conv.messages),
            tools=copy.deepcopy(conv.tools),
            chat_template=template,
            tokenize=False,
            add_generation_prompt=conv.add_generation_prompt,
            **conv.variables,
        )

    def render(self, name: str, conv: Conversation) -> str:
        template = self.templates[name]
        try:
            return foreign_render(
                template,
                lambda: self._apply(name, template, conv),
                conv.messages,
                tools=conv.tools,
                add_generation_prompt=conv.add_generation_prompt,
                **{**_special_texts(self.tokenizer), **conv.variables},
            )
        except Exception as exc:  # noqa: BLE001 - the failure is the evidence
            raise _failure(exc) from exc

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def piece(self, token_id: int) -> str:
        return str(self.tokenizer.convert_ids_to_tokens(int(token_id)))

    def token_id(self, attr: str) -> int | None:
        value = getattr(self.tokenizer, f"{attr}_token_id", None)
        return int(value) if isinstance(value, int) else None


def _special_texts(tokenizer: Any) -> dict[str, str]:
    """bos_token / eos_token as transformers passes them to templates."""
    out = {}
    for role in ("bos", "eos"):
        value = getattr(tokenizer, f"{role}_token", None)
        if isinstance(value, str):
            out[f"{role}_token"] = value
    return out


class SandboxSide(Side):
    """quantkit's own sandboxed renderer (the environment transformers uses) over template
    texts read straight from the artifact's files, and optionally the raw `tokenizers`
    library on its tokenizer.json: an implementation independent of the runtime's."""

    def __init__(
        self,
        templates: dict[str, str],
        variables: dict[str, str],
        label: str,
        tokenizer_json: Path | None = None,
    ) -> None:
        self.label = label
        self.templates = dict(templates)
        self.variables = variables
        self.tokenizer = None
        if tokenizer_json is not None:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(tokenizer_json))

    def render(self, name: str, conv: Conversation) -> str:
        from ..formats.chat_template import render

        try:
            return render(
                self.templates[name],
                copy.deepcopy(conv.messages),
                add_generation_prompt=conv.add_generation_prompt,
                tools=copy.deepcopy(conv.tools),
                **{**self.variables, **conv.variables},
            )
        except Exception as exc:  # noqa: BLE001
            raise _failure(exc) from exc

    def encode(self, text: str, *, add_special: bool = False) -> list[int] | None:
        if self.tokenizer is None:
            return None
        return list(self.tokenizer.encode(text, add_special_tokens=add_special).ids)

    def piece(self, token_id: int) -> str:
        if self.tokenizer is None:
            return str(token_id)
        return str(self.tokenizer.id_to_token(int(token_id)))


class LlamaCppSide(Side):
    """A GGUF loaded vocab-only by llama-cpp-python: its tokenizer, and its Jinja chat
    formatter fed the templates and BOS/EOS texts exactly as `Llama()` feeds them."""

    def __init__(self, path: Path) -> None:
        from jinja2 import TemplateError as JinjaError
        from llama_cpp import Llama

        from ..runtime.llama_cpp import silence_llama_cpp

        silence_llama_cpp()
        self.label = "llama.cpp"
        try:
            self.llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        except JinjaError as exc:  # Llama() compiles every stored chat template
            from ..errors import ArtifactError

            raise ArtifactError(
                f"A chat template in {path} is not valid Jinja ({exc}): llama-cpp-python, "
                "transformers and llama-server cannot use it.",
                hint="Fix the source's chat template and convert again.",
            ) from exc
        except (ValueError, RuntimeError) as exc:
            from ..errors import ArtifactError

            raise ArtifactError(
                f"llama.cpp cannot load {path} ({exc}).",
                hint="The file is corrupt or truncated; download or convert it again.",
            ) from exc
        try:
            import llama_cpp

            self._lib = llama_cpp
            self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
            meta = self.llm.metadata
            # The same selection Llama.__init__ makes for its chat handlers.
            self.templates = chat_templates(meta)
            self.bos_text = self.text(self.llm.token_bos())
            self.eos_text = self.text(self.llm.token_eos())
        except BaseException:
            self.llm.close()  # never leave the file mapped
            raise
        self._formatters: dict[tuple[str, bool], Any] = {}

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> LlamaCppSide:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def text(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        return self.llm._model.token_get_text(token_id)

    def special_id(self, role: str) -> int:
        fn = getattr(self._lib, f"llama_vocab_{role}")
        return int(fn(self.vocab))

    def is_eog(self, token_id: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token_id))

    def add_bos(self) -> bool:
        return bool(self._lib.llama_vocab_get_add_bos(self.vocab))

    def render(self, name: str, conv: Conversation) -> str:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        key = (name, conv.add_generation_prompt)

        def call() -> Any:
            if key not in self._formatters:  # compiling folds constants: also bounded
                self._formatters[key] = Jinja2ChatFormatter(
                    template=self.templates[name],
                    eos_token=self.eos_text,
                    bos_token=self.bos_text,
                    add_generation_prompt=conv.add_generation_prompt,
                )
            return self._formatters[key](
                messages=copy.deepcopy(conv.messages),
                tools=copy.deepcopy(conv.tools),
                **conv.variables,
            )

        try:
            result = foreign_render(
                self.templates[name],
                call,
                conv.messages,
                tools=conv.tools,
                add_generation_prompt=conv.add_generation_prompt,
                **{"bos_token": self.bos_text, "eos_token": self.eos_text, **conv.variables},
            )
        except Exception as exc:  # noqa: BLE001
            raise _failure(exc) from exc
        return result.prompt

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        # special=True: as llama-cpp-python's chat handlers tokenize rendered prompts.
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids, special=True).decode("utf-8", errors="replace")

    def piece(self, token_id: int) -> str:
        return self.text(int(token_id))


class MlxSide(TransformersSide):
    """An MLX folder's tokenizer as mlx-lm loads it: mlx_lm.utils.load_tokenizer's
    TokenizerWrapper with the eos ids mlx_lm.load gives it (config.json's, overridden by
    generation_config.json's, plus the tokenizer's eos), rendering through the wrapper's
    apply_chat_template as mlx_lm.generate, mlx_lm.chat and mlx_lm.server do (which also
    passes enable_thinking when the vocabulary has <think>)."""

    def __init__(self, folder: Path) -> None:
        from mlx_lm.utils import load_config, load_tokenizer

        self.label = "mlx-lm"
        eos = load_config(folder).get("eos_token_id")
        self.wrapper = load_tokenizer(folder, eos_token_ids=eos)
        self._use(self.wrapper._tokenizer)

    @property
    def eos_token_ids(self) -> set[int]:
        """Where mlx-lm's generate, chat and server stop."""
        return {int(i) for i in self.wrapper.eos_token_ids}

    def _apply(self, name: str, template: str, conv: Conversation) -> str:
        # By name, as the runtime stores it (a lone template is the tokenizer's own).
        chosen = name if isinstance(self.tokenizer.chat_template, dict) else None
        return self.wrapper.apply_chat_template(
            copy.deepcopy(conv.messages),
            tools=copy.deepcopy(conv.tools),
            chat_template=chosen,
            tokenize=False,
            add_generation_prompt=conv.add_generation_prompt,
            **conv.variables,
        )

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        return list(self.wrapper.encode(text, add_special_tokens=add_special))

    def stream(self, ids: list[int]) -> list[str]:
        """The text mlx-lm's streaming detokenizer prints for each id fed one by one (as
        stream_generate does), then what finalize() flushes, as the last segment."""
        detokenizer = self.wrapper.detokenizer
        segments = []
        for token in ids:
            detokenizer.add_token(int(token))
            segments.append(detokenizer.last_segment)
        detokenizer.finalize()
        segments.append(detokenizer.last_segment)
        return segments
