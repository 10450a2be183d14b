"""A loaded CLIP model and the embedding contract (with :mod:`bioclip.loading`, the only user of open_clip).

Embedding contract (every ``encode_*`` / ``embed_*`` method): ``np.ndarray``, float32, shape
(n, d), each row L2-normalised, so cosine similarity is the inner product; an empty input gives
shape (0, d). The model is in eval mode and encodes under ``torch.inference_mode()``. Its weights
are in the precision it was loaded at: fp32; bf16 (on a CPU with bf16 units or a GPU, where every
vector keeps a cosine >= 0.9999 to fp32); fp16 (fp16 weights on a CPU, fp32 weights under fp16
autocast on a GPU). Whatever the precision, vectors are normalised in fp32. Forward passes are
serialised by a lock, so one ``ClipModel`` may be shared by threads. Build one with
:func:`bioclip.load_model`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import open_clip
import torch

from .batching import check_batch_size, chunks, normalise, text_list
from .facts import ModelFacts
from .preprocess import ImageTransform, PreprocessConfig, make_transform
from .registry import ModelSpec
from .taxa import Taxon, TextForm, taxon_prompt, taxon_text

__all__ = ["ClipModel", "ensemble_texts"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the model


class ClipModel:
    """A loaded CLIP model with the project's embedding contract (see the module docstring).

    Attributes: ``spec`` (:class:`ModelSpec`), ``device`` (str), ``precision`` (``fp32``,
    ``bf16`` or ``fp16``), ``precision_note`` (why that precision), ``dimension`` (embedding size), ``context_length`` (text tokens),
    ``logit_scale`` (float, already exponentiated), ``preprocess_config`` and ``transform`` (the
    picklable PIL -> tensor transform), ``revision`` (the resolved commit for hf-hub models, else
    None), ``architecture`` (``ViT-B-16`` when the config is an open_clip built-in) and ``identity``
    (which weights file, for caches keyed by model; None for random weights).
    Build it with :func:`bioclip.load_model`.
    """

    def __init__(
        self,
        *,
        spec: ModelSpec,
        module: torch.nn.Module,
        tokenizer: Any,
        device: str,
        precision: str,
        preprocess_config: PreprocessConfig,
        dimension: int,
        context_length: int,
        revision: str | None,
        architecture: str,
        precision_note: str = "",
        identity: str | None = None,
    ):
        self.spec = spec
        self.device = device
        self.precision = precision
        self.precision_note = precision_note
        self.dimension = int(dimension)
        self.context_length = int(context_length)
        self.preprocess_config = preprocess_config
        self.transform: ImageTransform = make_transform(preprocess_config)
        self.revision = revision
        self.architecture = architecture
        self.identity = identity  # which weights (bioclip.hub.file_identity); None for random ones
        self._module = module.eval().requires_grad_(False)
        self._tokenizer = tokenizer
        self._torch_device = torch.device(device)
        # Images go in at the weights' dtype; fp32 weights under fp16 autocast on a GPU.
        self._input_dtype = next(module.parameters()).dtype
        self._autocast_dtype = torch.float16 if precision == "fp16" and self._input_dtype == torch.float32 else None
        self._lock = threading.Lock()
        with torch.no_grad():
            self.logit_scale = float(torch.as_tensor(module.logit_scale).float().exp().reshape(-1)[0])

    def __repr__(self) -> str:
        return (
            f"ClipModel({self.spec.name!r}, architecture={self.architecture!r}, dimension={self.dimension}, "
            f"device={self.device!r}, precision={self.precision!r}, revision={self.revision!r})"
        )

    @property
    def torch_model(self) -> torch.nn.Module:
        """The underlying open_clip module (eval mode). Use the ``encode_*`` methods for embeddings."""
        return self._module

    def describe(self) -> dict[str, Any]:
        """JSON-able description for a collection manifest: enough to load the same model with
        the same preprocessing again and to refuse a different one."""
        return ModelFacts(
            spec=self.spec,
            revision=self.revision,
            architecture=self.architecture,
            dimension=self.dimension,
            context_length=self.context_length,
            preprocess_config=self.preprocess_config,
            precision=self.precision,
            identity=self.identity,
        ).describe()

    # ----------------------------------------------------------------- images

    def encode_image_tensors(self, batch: torch.Tensor, *, normalize: bool = True) -> np.ndarray:
        """Embed a batch already made by :attr:`transform` (stacked: (n, 3, size, size)).

        The batch is moved to the device (non-blocking) and encoded in one forward pass.
        ``normalize=False`` returns the image tower's raw features (what pybioclip's ``embed``
        writes), outside the embedding contract.
        """
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ValueError(f"encode_image_tensors takes a (n, 3, H, W) tensor, got {shape}.")
        if batch.shape[0] == 0:
            return self._empty()
        size = self.preprocess_config.size
        if tuple(batch.shape[2:]) != (size, size):
            raise ValueError(f"Image batch is {tuple(batch.shape[2:])}, the model takes {(size, size)}.")
        return self._forward(self._module.encode_image, batch.to(dtype=torch.float32), normalize=normalize)

    def encode_images(self, images: Iterable[Any], batch_size: int = 32, *, normalize: bool = True) -> np.ndarray:
        """Embed PIL images (RGB; other modes are converted) with :attr:`transform`, in batches."""
        check_batch_size(batch_size)
        parts = [
            self.encode_image_tensors(torch.stack([self.transform(image) for image in chunk]), normalize=normalize)
            for chunk in chunks(images, batch_size)
        ]
        return np.concatenate(parts) if parts else self._empty()

    # ----------------------------------------------------------------- text

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Embed texts as they are (no prompt added). Texts longer than :attr:`context_length`
        tokens are truncated by the tokenizer; see :meth:`text_is_truncated`."""
        texts = text_list(texts)
        check_batch_size(batch_size)
        parts = [self._forward(self._encode_text, self._tokenizer(list(chunk))) for chunk in chunks(texts, batch_size)]
        return np.concatenate(parts) if parts else self._empty()

    def text_token_count(self, text: str) -> int:
        """Tokens ``text`` takes, start and end tokens included (compare with :attr:`context_length`)."""
        tokenizer = self._tokenizer
        if isinstance(tokenizer, open_clip.SimpleTokenizer):
            return len(tokenizer.encode(text)) + 2
        hf = getattr(tokenizer, "tokenizer", None)
        if hf is not None and callable(hf):
            clean = getattr(tokenizer, "clean_fn", lambda s: s)
            return len(hf(clean(text))["input_ids"])
        # Unknown tokenizer: tokenize without a length limit and count the non-padding ids.
        ids = tokenizer([text], context_length=10_000)
        return int((ids != 0).sum())

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """The model's token ids of ``texts``: int64 (n, :attr:`context_length`)."""
        return np.asarray(self._tokenizer(text_list(texts)), dtype=np.int64)

    def bpe_vocab(self) -> str | None:
        """The vocabulary file of this model's tokenizer when it is open_clip's default CLIP BPE
        tokenizer (which :class:`bioclip.bpe.ClipBpe` reproduces without torch), else None."""
        tok = self._tokenizer
        plain = (
            type(tok) is open_clip.SimpleTokenizer
            and getattr(tok, "reduction_fn", None) is None
            and len(getattr(tok, "all_special_ids", ())) == 2
            and getattr(getattr(tok, "clean_fn", None), "__name__", "") == "_clean_lower"
        )
        return open_clip.tokenizer.default_bpe() if plain and tok.vocab_size == 49408 else None

    def text_is_truncated(self, text: str) -> bool:
        """Whether the model sees only the beginning of ``text`` (more tokens than it takes)."""
        return self.text_token_count(text) > self.context_length

    def embed_text_ensemble(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """One vector per text from OpenAI's 80 ImageNet templates, as pybioclip and BioCLIP's
        evaluation do: embed every filled template, average the normalised vectors, renormalise."""
        texts = text_list(texts)
        if not texts:
            return self._empty()
        filled = [t for text in texts for t in ensemble_texts(text)]
        per_template = self.encode_texts(filled, batch_size=batch_size)
        mean = per_template.reshape(len(texts), -1, self.dimension).mean(axis=1)
        return normalise(mean)

    def embed_taxa(
        self,
        taxa: Sequence[Taxon],
        form: TextForm | str = TextForm.TAXONOMIC_COMMON,
        ensemble: bool = False,
    ) -> np.ndarray:
        """Embed taxa in one of BioCLIP's text forms.

        Without ``ensemble``: the caption ``a photo of {text}.`` (:func:`bioclip.taxa.taxon_prompt`).
        With ``ensemble``: the text filled into OpenAI's 80 templates (:meth:`embed_text_ensemble`).
        """
        taxa = list(taxa)
        if ensemble:
            return self.embed_text_ensemble([taxon_text(t, form) for t in taxa])
        return self.encode_texts([taxon_prompt(t, form) for t in taxa])

    # ----------------------------------------------------------------- internals

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.dimension), dtype=np.float32)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._torch_device.type, dtype=self._autocast_dtype)

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's text encoding, without the padding after the longest text's end token.

        CLIP's text transformer is causal and pools at the end token, so positions after it never
        influence the result: cutting them off gives the same vectors (to float rounding) at a
        fraction of the cost for the short texts of queries (77 positions -> ~10). Models that pool
        differently or attend both ways go through open_clip's own ``encode_text``.
        """
        tower = self.text_tower()
        if tower is None:
            return self._module.encode_text(tokens)  # type: ignore[operator]
        return tower(tokens[:, : int(tokens.argmax(dim=-1).max()) + 1])

    def text_tower(self) -> torch.nn.Module | None:
        """The text encoder as a module of its own: token ids (n, L), cut after the longest text's
        end token (:meth:`tokenize`, then ``[:, :L]``) -> unnormalised features (n, d). None where
        that cut does not apply (text that is not pooled at the end token of a causal transformer)."""
        m: Any = self._module
        mask = getattr(m, "attn_mask", None)
        if not isinstance(m, open_clip.CLIP) or mask is None or getattr(m, "text_pool_type", "argmax") != "argmax":
            return None
        return _CausalText(m)

    def _forward(self, encode: Any, inputs: torch.Tensor, *, normalize: bool = True) -> np.ndarray:
        with self._lock, torch.inference_mode():
            inputs = inputs.to(self._torch_device, non_blocking=True)
            if inputs.is_floating_point():
                inputs = inputs.to(self._input_dtype)  # cast where the model runs
            with self._autocast():
                features = encode(inputs)
            # Normalise in fp32 whatever the weights' or autocast's dtype.
            features = features.float()
            if normalize:
                features = torch.nn.functional.normalize(features, dim=-1)
            return features.cpu().numpy().astype(np.float32, copy=False)


class _CausalText(torch.nn.Module):
    """The text half of an open_clip ``CLIP`` (its own parameters, shared), on tokens cut to any length."""

    def __init__(self, clip: Any):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.clip
        length = tokens.shape[1]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        proj = m.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return x


def ensemble_texts(text: str) -> list[str]:
    """``text`` filled into OpenAI's 80 ImageNet templates (from open_clip's zero_shot_metadata)."""
    return [template(text) for template in open_clip.OPENAI_IMAGENET_TEMPLATES]
