"""A model's text tower exported to ONNX, for a text query that imports neither torch nor open_clip.

Most of a first text query in a fresh process is imports: torch, then open_clip (which pulls in
torchvision and timm); encoding one text is a fraction of a second. So once per machine and model the
text tower is exported (fp32, on the CPU, from the original weights) to a folder in the user's cache
(``text-encoders/`` beside ``precision.json``, see :func:`bioclip.precision.cache_folder`), with the
tokenizer's vocabulary and a ``meta.json``; a later process that only needs text vectors opens it
with ONNX Runtime (:class:`TextEncoder`) and tokenizes with :class:`bioclip.bpe.ClipBpe`.

Its vectors are the fp32 model's (float32, L2-normalised; every one keeps a cosine >= 0.9999 to the
torch model's, checked on a probe before the folder is published), so they compare with a
collection built at any precision. Only models with open_clip's default CLIP tokenizer are exported;
for the others, or without ``onnxruntime``, :func:`open_text_encoder` returns None and the caller
loads the model as usual. Delete the folder to export again; a changed weights file gets a new one.
``BIOCLIP_TEXT_ENCODER=off`` neither exports nor uses one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .batching import check_batch_size, chunks, normalise, text_list
from .bpe import ClipBpe
from .precision import MIN_COSINE, cache_folder

__all__ = [
    "ENV_SWITCH",
    "FORMAT",
    "TextEncoder",
    "enabled",
    "encoder_folder",
    "export_text_encoder",
    "open_text_encoder",
]

log = logging.getLogger(__name__)

ENV_SWITCH = "BIOCLIP_TEXT_ENCODER"
#: Bumped when the folder's layout or the export changes; older folders are ignored.
#: 1: torch.export (dynamo) graph, any batch and length (tens of seconds to export on two cores);
#: 2: a traced graph of one text at the full context length (a few seconds to export).
FORMAT = 2
_ONNX, _VOCAB, _META = "text.onnx", "bpe_simple_vocab_16e6.txt.gz", "meta.json"
_PROBE = (
    "a photo of Corvus corax.",
    "a photo of Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common name common raven.",
    "herbarium sheet of Quercus robur L., collected 1887",
    "Käfer auf einem Blatt &amp; Blüte",
    "x",
    " ".join(["a very long description of a specimen"] * 20),
)


def enabled() -> bool:
    """False where ``BIOCLIP_TEXT_ENCODER`` is ``off`` (or ``0``, ``no``, ``false``)."""
    return os.environ.get(ENV_SWITCH, "").strip().lower() not in ("off", "0", "no", "false")


def encoder_folder(identity: str) -> Path:
    """Where the text encoder of the weights named ``identity`` lives."""
    digest = hashlib.sha256(f"{FORMAT}|{identity}".encode()).hexdigest()[:24]
    return cache_folder() / "text-encoders" / digest


class TextEncoder:
    """Text -> float32 unit vectors through an exported text tower in ONNX Runtime (no torch).

    The text side of :class:`bioclip.ClipModel`: ``encode_texts``, ``text_token_count``,
    ``text_is_truncated``, ``context_length``, ``dimension``; ``precision`` is ``fp32`` and
    ``device`` ``cpu``. Thread-safe (ONNX Runtime sessions are).
    """

    precision = "fp32"
    device = "cpu"

    def __init__(self, folder: str | os.PathLike[str]):
        import onnxruntime as ort

        folder = Path(folder)
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
        self.folder = folder
        self.identity = str(meta["identity"])
        self.dimension = int(meta["dimension"])
        self.context_length = int(meta["context_length"])
        self._bpe = ClipBpe(folder / _VOCAB, self.context_length)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about the graph are not the user's business
        self._session = ort.InferenceSession(str(folder / _ONNX), options, providers=["CPUExecutionProvider"])

    def __repr__(self) -> str:
        return f"TextEncoder({str(self.folder)!r}, dimension={self.dimension})"

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts as they are (no prompt added), truncated to :attr:`context_length` tokens."""
        texts = text_list(texts)
        check_batch_size(batch_size)
        parts = [self._run(self._bpe(chunk)) for chunk in chunks(texts, batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dimension), np.float32)

    def text_token_count(self, text: str) -> int:
        return self._bpe.token_count(text)

    def text_is_truncated(self, text: str) -> bool:
        return self.text_token_count(text) > self.context_length

    def _run(self, tokens: np.ndarray) -> np.ndarray:
        # The graph takes one text of the full context length (the model's own padding: positions
        # after the end token change nothing in a causal tower pooled there).
        rows = [self._session.run(None, {"tokens": row[None, :]})[0] for row in tokens]
        return normalise(np.concatenate(rows))


def open_text_encoder(identity: str | None) -> TextEncoder | None:
    """The exported text encoder of the weights named ``identity``, or None (not exported on this
    machine, random weights, ONNX Runtime missing or the folder unreadable: load the model then)."""
    if not identity or not enabled():
        return None
    folder = encoder_folder(identity)
    if not (folder / _META).is_file():
        return None
    try:
        encoder = TextEncoder(folder)
    except ImportError:
        log.debug("onnxruntime is not installed; text goes through the model")
        return None
    except Exception as exc:  # a damaged cache must never stop a query: the model still works
        log.warning("ignoring the text encoder at %s (%s); delete it to export it again", folder, exc)
        return None
    if encoder.identity != identity:
        return None
    return encoder


_EXPORT_LOCK = threading.Lock()


def export_text_encoder(model: Any) -> Path | None:
    """Export ``model``'s text tower (a :class:`bioclip.ClipModel`) once per machine and model;
    returns the folder, or None where it does not apply (random weights, a tokenizer other than
    CLIP's, ONNX Runtime missing) or failed (logged; nothing is left behind)."""
    identity, vocab = model.identity, model.bpe_vocab()
    if not identity or vocab is None or not enabled() or model.text_tower() is None:
        return None
    folder = encoder_folder(identity)
    if (folder / _META).is_file():
        return folder
    failed = folder.with_name(folder.name + ".failed")
    if failed.is_file():  # tried on this machine and failed: not again at every build
        log.debug("not exporting the text encoder again (%s; delete it to try again)", failed)
        return None
    try:
        import onnxruntime  # noqa: F401  (an export nothing can read is not worth its time)
    except ImportError:
        return None
    with _EXPORT_LOCK:
        log.info("exporting the text encoder of %s for fast text queries (once per machine and model)", model.spec.name)
        t0 = time.perf_counter()
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
        try:
            _export(model, vocab, tmp)
            meta = {
                "format": FORMAT,
                "identity": identity,
                "source": model.spec.source,
                "revision": model.revision,
                "dimension": model.dimension,
                "context_length": model.context_length,
            }
            (tmp / _META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
            _check(model, tmp)
            try:
                os.replace(tmp, folder)
            except OSError:
                if not (folder / _META).is_file():  # not another process's export that won the race
                    raise
        except Exception as exc:
            log.warning(
                "could not export the text encoder of %s (%s: %s); text queries load the model (%s says why; "
                "delete it to try again)",
                *(model.spec.name, type(exc).__name__, exc, failed),
            )
            with contextlib.suppress(OSError):
                failed.write_text(json.dumps({"identity": identity, "error": f"{type(exc).__name__}: {exc}"}))
            return None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported the text encoder of %s to %s in %.1fs", model.spec.name, folder, time.perf_counter() - t0)
    return folder


def _reference(model: Any) -> Any:
    """The same weights in fp32 on the CPU (the export's source and its check's reference)."""
    if (model.precision, str(model.device)) == ("fp32", "cpu"):
        return model
    import dataclasses

    from .loading import load_model

    spec = dataclasses.replace(model.spec, revision=model.revision or model.spec.revision)
    return load_model(spec, device="cpu", precision="fp32", preprocess=model.preprocess_config)


def _export(model: Any, vocab: str, dest: Path) -> None:
    """The causal text tower traced on one text of the full context length, to ONNX.

    Tracing (torch's TorchScript-based exporter) takes a few seconds where ``torch.export`` takes
    tens on two cores, and a build pays for it; a traced attention keeps the shapes it was traced
    with, so the graph takes exactly one text of ``context_length`` tokens (as the model itself is
    fed), and :class:`TextEncoder` runs it once per text. A query is one text or a few."""
    import io
    import warnings

    import torch

    tower = _reference(model).text_tower()
    if tower is None:
        raise ValueError("the text tower is not a causal transformer pooled at the end token")
    tokens = torch.from_numpy(ClipBpe(vocab, model.context_length)([_PROBE[1]]))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes are not the user's business
        torch.onnx.export(
            tower,
            (tokens,),
            str(dest / _ONNX),
            input_names=["tokens"],
            output_names=["features"],
            dynamo=False,
            opset_version=17,
        )
    shutil.copyfile(vocab, dest / _VOCAB)


def _check(model: Any, folder: Path) -> None:
    """The exported encoder must tokenize as the model does and give its fp32 vectors."""
    ref = _reference(model)
    encoder = TextEncoder(folder)
    theirs = ref.tokenize(list(_PROBE))
    if not np.array_equal(encoder._bpe(list(_PROBE)), theirs):
        raise ValueError("the torch-free tokenizer disagrees with the model's")
    cosine = (encoder.encode_texts(list(_PROBE)) * ref.encode_texts(list(_PROBE))).sum(axis=1)
    if float(cosine.min()) < MIN_COSINE:
        raise ValueError(f"exported text vectors differ from the model's (cosine {float(cosine.min()):.6f})")
