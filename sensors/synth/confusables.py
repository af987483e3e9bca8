"""Phonetic confusables of a wake phrase: the hard negatives a keyword spotter must reject.

Candidates come from edits a listener could mishear: a word alone ("jarvis"), the phrase cut
short ("hey jar"), a swapped onset ("hey travis"), vowel or ending ("hey jervis", "hey jarvey").
espeak-ng turns each into phonemes; a candidate that sounds exactly like the phrase ("hay jarvis")
or contains it whole would be a positive in disguise, so it is dropped, and the rest are ranked
by phoneme edit distance so the closest misses come first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from sensors.synth.tts import phonemize

log = logging.getLogger(__name__)

_VOWELS = "aeiouy"
_ONSETS = ("", "b", "br", "c", "ch", "d", "dr", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p",
           "pr", "r", "s", "sh", "st", "t", "th", "tr", "v", "w")
_VOWEL_SWAPS = ("a", "e", "i", "o", "u", "ai", "ee", "oo", "ar", "er", "or", "ur", "ay", "ow")
_ENDINGS = ("", "s", "ss", "is", "es", "us", "ish", "ice", "y", "ey", "ie", "in", "it", "er", "a")


@dataclass(frozen=True, slots=True)
class Confusable:
    text: str
    how: str          # the edit: word, truncation, or onset / vowel / onset+vowel / ending ":" word index
    distance: float   # normalised phoneme edit distance to the phrase (0 = identical)


def _word_edits(w: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    m = re.match(rf"^([^{_VOWELS}]*)([{_VOWELS}]+r?)(.*)$", w)
    if m:
        onset, vowel, rest = m.groups()
        out += [(o + vowel + rest, "onset") for o in _ONSETS if o != onset]
        out += [(onset + v + rest, "vowel") for v in _VOWEL_SWAPS if v != vowel]
        # Both at once is how "jarvis" becomes "travis" or "harvest" becomes "marvis".
        out += [(o + v + rest, "onset+vowel") for o in _ONSETS if o != onset
                for v in _VOWEL_SWAPS if v != vowel]
    # Replace everything after the last consonant run that follows the first vowel.
    m = re.match(rf"^(.*?[{_VOWELS}]+[^{_VOWELS}]+)([{_VOWELS}].*)$", w)
    if m:
        out += [(m.group(1) + e, "ending") for e in _ENDINGS if e != m.group(2)]
    return out


def candidates(phrase: str) -> list[tuple[str, str]]:
    """Every (text, how) edit of ``phrase``, before phonetic filtering, in a stable order."""
    words = phrase.lower().split()
    out: list[tuple[str, str]] = []
    n = len(words)
    for i in range(n):
        for j in range(i + 1, n + 1):
            if (i, j) != (0, n):
                out.append((" ".join(words[i:j]), "word"))
    last = words[-1]
    for k in range(2, len(last)):
        # Cut at a consonant after a vowel: "jar", "jarv" are things people do say.
        if last[k - 1] not in _VOWELS or k == len(last) - 1:
            out.append((" ".join(words[:-1] + [last[:k]]), "truncation"))
    for i, w in enumerate(words):
        for edited, how in _word_edits(w):
            if edited and edited != w:
                out.append((" ".join(words[:i] + [edited] + words[i + 1:]), f"{how}:{i}"))
    seen: dict[str, str] = {}
    for text, how in out:
        text = " ".join(text.split())
        if text and text != " ".join(words):
            seen.setdefault(text, how)
    return list(seen.items())


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def generate(phrase: str, n: int = 40, *, max_distance: float = 0.5) -> list[Confusable]:
    """Up to ``n`` confusables of ``phrase``, closest first; structural ones (a word alone, the
    phrase cut short) always come first because they are the most common false triggers."""
    return list(_generate(" ".join(phrase.lower().split()), n, max_distance))


@lru_cache(maxsize=16)
def _generate(phrase: str, n: int, max_distance: float) -> tuple[Confusable, ...]:
    # Cached: phonemising the ~800 candidates is the slow part (espeak-ng, about 3 s).
    cands = candidates(phrase)
    if not cands:
        return ()
    phones = phonemize([phrase] + [t for t, _ in cands])
    if phones is None:
        log.warning("espeak-ng missing: confusables ranked by spelling, not sound")
        phones = [phrase] + [t for t, _ in cands]
    target = phones[0].replace(" ", "")
    structural: list[Confusable] = []
    buckets: dict[str, list[Confusable]] = {}
    seen_sounds = {target}
    for (text, how), ph in zip(cands, phones[1:], strict=True):
        sound = ph.replace(" ", "")
        if not sound or sound in seen_sounds or target in sound:
            continue
        seen_sounds.add(sound)
        d = edit_distance(target, sound) / max(len(target), len(sound))
        c = Confusable(text, how, round(d, 4))
        if how in ("word", "truncation"):
            structural.append(c)
        elif d <= max_distance:
            buckets.setdefault(how, []).append(c)
    # Round-robin over (edit, word) buckets, closest first in each, so forty confusables are not
    # forty spellings of the first word's onset.
    queues = [sorted(b, key=lambda c: (c.distance, c.text)) for _, b in sorted(buckets.items())]
    edits: list[Confusable] = []
    while any(queues):
        for q in queues:
            if q:
                edits.append(q.pop(0))
    return tuple((structural + edits)[:n])
