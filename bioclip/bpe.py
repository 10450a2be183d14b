"""CLIP's byte-level BPE tokenizer without torch: the text side of a query that loads no torch.

open_clip's ``SimpleTokenizer`` (OpenAI CLIP's) imports torch, and importing open_clip costs seconds
more (torchvision, timm), which is most of a first text query. This is the same algorithm on the same
vocabulary file (``bpe_simple_vocab_16e6.txt.gz``, copied next to an exported text encoder by
:mod:`bioclip.text_onnx`) with the same cleaning (ftfy, HTML unescaping, whitespace, lower case), the
same pattern and the same truncation; it returns numpy arrays. Only the default tokenizer is covered
(``clean='lower'``, no reduction, no extra special tokens): models with another tokenizer are not
exported. ``tests/test_text_onnx.py`` checks it id for id against open_clip's on a corpus of texts.
"""

from __future__ import annotations

import functools
import gzip
import html
from pathlib import Path

import ftfy
import numpy as np
import regex

__all__ = ["ClipBpe"]

_SPECIAL = ("<start_of_text>", "<end_of_text>")
_MERGES = 49152 - 256 - 2  # merges CLIP's vocabulary uses (the file holds more)


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map of the 256 byte values to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _clean(text: str) -> str:
    """open_clip's ``clean='lower'``: ftfy, HTML entities unescaped twice, whitespace collapsed, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipBpe:
    """Tokenize texts as open_clip's default tokenizer does: ``tokenizer(texts)`` -> int64 array
    (n, context_length): start token, BPE ids, end token, zero padding; a text too long is cut and
    ends with the end token."""

    def __init__(self, vocab_path: str | Path, context_length: int = 77):
        with gzip.open(vocab_path) as f:
            merges_text = f.read().decode("utf-8").split("\n")[1 : _MERGES + 1]
        merges = [tuple(m.split()) for m in merges_text]
        vocab = list(_bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + list(_SPECIAL)
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder[_SPECIAL[0]], self.encoder[_SPECIAL[1]]
        self.context_length = int(context_length)
        self._cache: dict[str, list[str]] = {t: [t] for t in _SPECIAL}
        self._byte = _bytes_to_unicode()
        self._pattern = regex.compile(
            "|".join(_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def _bpe(self, token: str) -> list[str]:
        hit = self._cache.get(token)
        if hit is not None:
            return hit
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        if len(self._cache) < 100_000:
            self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text``, without start and end tokens."""
        ids: list[int] = []
        for token in self._pattern.findall(_clean(text)):
            mapped = "".join(self._byte[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(mapped))
        return ids

    def token_count(self, text: str) -> int:
        """Tokens ``text`` takes, start and end tokens included."""
        return len(self.encode(text)) + 2

    def __call__(self, texts: list[str]) -> np.ndarray:
        n = self.context_length
        out = np.zeros((len(texts), n), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = self.eot
            out[row, : len(ids)] = ids
        return out
