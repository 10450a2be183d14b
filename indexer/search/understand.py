"""Understanding a query and embedding it: text against the collection's own taxonomy, images
with the collection's preprocessing, indexed images by their stored vector, and the weighted
combination of terms (see :mod:`indexer.search.query` for the maths).

Text that names a taxon of the collection becomes BioCLIP's taxonomic (+ common name) text; other
text goes to the model as it is. Text embeddings are cached (the app searches the same text again
for its facet counts and pages); the model is asked for only when a term needs it.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from indexer.errors import DecodeError, QueryError
from indexer.media.decode import decode_image
from indexer.search.query import MAX_IMAGE_BYTES, EmbeddedTerm, Query, Term, combine, read_query_file
from indexer.search.state import ServedState
from indexer.search.taxon_match import SUPRA_RANKS
from indexer.search.taxonomy import TaxonMatch, looks_like_scientific_name

__all__ = [
    "QueryEmbedder",
    "interpret",
    "taxon_prompt_for",
    "TEXT_CACHE_SIZE",
    "ImageInput",
    "MAX_IMAGE_PIXELS",
]

ImageInput = Any  # a path (str / Path), bytes, or a PIL image

#: Text embeddings kept (prompt -> vector).
TEXT_CACHE_SIZE = 1024
#: Largest query picture in pixels (width x height, from its header, checked before decoding).
MAX_IMAGE_PIXELS = 200_000_000


def taxon_prompt_for(match: TaxonMatch) -> str:
    """The text BioCLIP is evaluated with for a taxon of the collection. A rank between the seven
    (a subfamily, a tribe) is the lineage it hangs from followed by its own name."""
    from bioclip.taxa import TextForm, taxon_prompt, taxon_text

    if match.rank in SUPRA_RANKS:
        text = f"{taxon_text(match.taxon(), TextForm.TAXONOMIC)} {match.name}"
        if match.common_name:
            text += f" with common name {match.common_name}"
        return f"a photo of {text}."
    form = TextForm.TAXONOMIC_COMMON if match.common_name else TextForm.TAXONOMIC
    return taxon_prompt(match.taxon(), form)


class QueryEmbedder:
    """Embeds queries for one collection (of vectors of ``dimension``) with the model that
    ``model()`` gives (called only when a term needs it), text with ``text_model()`` (default: the
    model). Thread-safe."""

    def __init__(
        self,
        model: Callable[[], Any],
        dimension: int,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        text_model: Callable[[], Any] | None = None,
    ):
        self._model = model
        self._text_model = text_model or model
        self.dimension = dimension
        self.max_image_bytes = max_image_bytes
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._text_lock = threading.Lock()

    def clear(self) -> None:
        """Forget cached text embeddings."""
        with self._text_lock:
            self._text_cache.clear()

    def embed(self, state: ServedState, q: Query) -> tuple[np.ndarray, list[EmbeddedTerm], list[str]]:
        """(unit query vector (1, d), each term as embedded, notices)."""
        notices: list[str] = []
        parts: list[EmbeddedTerm | None] = [None] * len(q.terms)
        texts: list[tuple[int, str]] = []
        for i, term in enumerate(q.terms):
            if term.kind in ("text", "taxon"):
                prompt, desc, taxon, alts, more = self.understand_text(state, term)
                notices += more
                parts[i] = EmbeddedTerm(term, np.empty(0, np.float32), desc, prompt, taxon, alts)
                texts.append((i, prompt))
            elif term.kind == "image":
                parts[i] = EmbeddedTerm(term, self.embed_image(term.value)[0], term.describe())
            elif term.kind == "id":
                image_id, note = self.current_id(state, int(term.value))
                if note:
                    notices.append(note)
                desc = f"image {image_id}" if image_id == int(term.value) else f"image {image_id} (was {term.value})"
                vec = self.stored_vector(state, image_id)
                parts[i] = EmbeddedTerm(term, vec, desc, image_id=image_id)
            else:
                parts[i] = EmbeddedTerm(term, self.unit(term.value), term.label or "a vector")
        if texts:
            vecs, more = self.encode_texts([p for _, p in texts])
            notices += more
            for (i, _), v in zip(texts, vecs):
                parts[i].vector = v  # type: ignore[union-attr]
        done = [p for p in parts if p is not None]
        if len(done) == 1 and done[0].term.weight > 0:
            qvec = done[0].vector.reshape(1, -1).astype(np.float32)
        else:
            qvec = combine(np.stack([p.vector for p in done]), [p.term.weight for p in done])
        return qvec, done, notices

    def understand_text(
        self, state: ServedState, term: Term
    ) -> tuple[str, str, TaxonMatch | None, list[TaxonMatch], list[str]]:
        """(prompt, description, taxon, other candidates, notices) for a text or taxon term."""
        text = " ".join(term.value.split())
        notices: list[str] = []
        matches = state.taxonomy().resolve(text)
        if matches:
            taxon = matches[0]
            if len(matches) > 1:
                notices.append(
                    f"{text!r} names several taxa in this collection: "
                    + "; ".join(f"{m.describe()} ({m.count} images)" for m in matches[:8])
                    + f". Searching for {taxon.describe()}; put a parent taxon before the name to choose another"
                    + (f" (e.g. '{_parent_hint(matches[1])}')" if _parent_hint(matches[1]) else "")
                    + "."
                )
            prompt = taxon_prompt_for(taxon)
            return prompt, f'{taxon.describe()}, as "{prompt}"', taxon, matches[1:], notices
        if term.kind == "taxon" or looks_like_scientific_name(text):
            # only for names: a typo check on every free-text query would cost time for nothing
            close = state.taxonomy().close_matches(text, 3)
            hint = "; did you mean " + " or ".join(m.name for m in close) + "?" if close else ""
            notices.append(f"no taxon named {text!r} in this collection; searched as free text{hint}")
        return text, f'free text "{text}"', None, [], notices

    def encode_texts(self, prompts: list[str]) -> tuple[list[np.ndarray], list[str]]:
        """Unit vectors of ``prompts`` (cached), and a notice for each the model cuts short."""
        notices: list[str] = []
        out: dict[str, np.ndarray] = {}
        with self._text_lock:
            for p in prompts:
                v = self._text_cache.get(p)
                if v is not None:
                    self._text_cache.move_to_end(p)
                    out[p] = v
        todo = list(dict.fromkeys(p for p in prompts if p not in out))
        model = self._text_model()
        for p in dict.fromkeys(prompts):
            if _truncated(model, p):
                notices.append(
                    f"the text {_short(p)!r} is longer than the model reads ({model.context_length} tokens); "
                    "the end was cut off"
                )
        if todo:
            # One text per forward pass: a text's vector then depends on that text alone, not on
            # which others it was batched with (in bf16 the padding cut changes the rounding), so
            # the same query scores the same in any process, cached or not.
            vecs = [model.encode_texts([p])[0] for p in todo]
            with self._text_lock:
                for p, v in zip(todo, vecs):
                    v = np.asarray(v, dtype=np.float32)
                    v.flags.writeable = False
                    out[p] = v
                    self._text_cache[p] = v
                while len(self._text_cache) > TEXT_CACHE_SIZE:
                    self._text_cache.popitem(last=False)
        return [out[p] for p in prompts], notices

    def current_id(self, state: ServedState, image_id: int) -> tuple[int, str | None]:
        """(the id to search with, a notice): a retired id is followed to the image that replaced
        it, with a notice saying so; one that nothing replaced is a QueryError saying why."""
        if not state.is_retired(image_id):
            return image_id, None
        rep = state.replacement(image_id)
        if rep is None or rep.new_id is None:
            raise QueryError(rep.describe() if rep is not None else f"image {image_id} is no longer in this collection")
        return rep.new_id, f"{rep.describe()}; searching with image {rep.new_id}"

    def stored_vector(self, state: ServedState, image_id: int) -> np.ndarray:
        if state.is_retired(int(image_id)):
            raise QueryError(f"image {image_id} is no longer in this collection")
        try:
            return state.vectors(np.array([int(image_id)]))[0]
        except KeyError:
            raise QueryError(f"no image with id {image_id} in this collection") from None

    def unit(self, vector: Any) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.size != self.dimension:
            raise QueryError(f"vector has {v.size} dimensions; this collection has {self.dimension}")
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0:
            raise QueryError("the query vector is zero or not finite")
        return v / norm

    def embed_image(self, image: ImageInput) -> np.ndarray:
        """Embed a query image (path, bytes or PIL image) with the collection's preprocessing: (1, d).

        A path must be a regular file, the bytes at most ``max_image_bytes``, the picture at most
        MAX_IMAGE_PIXELS; anything else is a QueryError, raised before the model is loaded."""
        data, name = self._image_bytes(image)
        model = self._model()
        try:
            decoded = decode_image(
                data, min_size=tuple(model.preprocess_config.draft_size), name=name, max_pixels=MAX_IMAGE_PIXELS
            )
        except DecodeError as exc:
            raise QueryError(f"that file is not an image this engine can read ({exc.reason}: {exc.detail})") from None
        import torch

        tensor = model.transform(decoded.image).unsqueeze(0)
        with torch.inference_mode():
            return model.encode_image_tensors(tensor)

    def _image_bytes(self, image: ImageInput) -> tuple[bytes, str | None]:
        """(the encoded picture, its name) of a query image, checked against the limits."""
        limit = self.max_image_bytes
        if isinstance(image, (str, os.PathLike)):
            return read_query_file(image, limit), os.fspath(image)
        if isinstance(image, (bytes, bytearray, memoryview)):
            if len(image) > limit:
                raise QueryError(
                    f"the picture is {len(image) / 1048576:.1f} MB; query pictures up to {limit / 1048576:g} MB are read"
                )
            return bytes(image), None
        if hasattr(image, "convert") and hasattr(image, "size"):
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise QueryError(
                    f"the picture has {width} x {height} pixels; query pictures up to "
                    f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels are read"
                )
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            return buf.getvalue(), None
        raise QueryError(f"cannot use a {type(image).__name__} as an image")


def interpret(q: Query, parts: list[EmbeddedTerm], label: str | None) -> str:
    """How the query was understood, in words."""
    if len(parts) == 1 and parts[0].term.weight == 1.0:
        p = parts[0]
        kind = p.term.kind
        if kind in ("text", "taxon"):
            return p.description
        if kind == "image":
            return "images similar to the uploaded picture" + (f" {p.term.label}" if p.term.label else "")
        if kind == "id":
            return f"images similar to {p.description}"
        return label or "a vector query"
    words = []
    for n, p in enumerate(parts):
        w = p.term.weight
        sign = "-" if w < 0 else "+"
        mag = abs(w)
        what = p.description if p.term.kind in ("text", "taxon", "id") else p.term.describe()
        text = what if mag == 1.0 else f"{mag:g} x {what}"
        words.append(text if n == 0 and sign == "+" else f"{sign} {text}")
    return "combination: " + " ".join(words)


def _parent_hint(m: TaxonMatch) -> str | None:
    """'Moraceae Morus': the nearest higher taxon and the name, which resolves to just ``m``."""
    above = m.higher()
    return f"{above[-1]} {m.name}" if above else None


def _truncated(model: Any, text: str) -> bool:
    try:
        return bool(model.text_is_truncated(text))
    except Exception:  # a tokenizer that cannot count: say nothing rather than fail the search
        return False


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
