"""The wake phrase and the command vocabulary, defined once.

The node (what it listens for), the cloud (what it recognises after the wake word) and the data
tools (what they synthesise and label) all import these, so a command added here is trained,
recognised and evaluated without editing three lists that drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

WAKE_PHRASE = "hey jarvis"


@dataclass(frozen=True, slots=True)
class Command:
    """One intent and the utterances that express it. ``name`` is the stable id the cloud returns."""

    name: str
    phrases: tuple[str, ...]


# Single words first (Speech Commands style), then short phrases. Every phrase is lower case,
# without punctuation, so it can be compared with a recogniser's normalised transcript.
COMMANDS: tuple[Command, ...] = (
    Command("on", ("on", "turn on", "switch on")),
    Command("off", ("off", "turn off", "switch off")),
    Command("up", ("up", "volume up", "turn it up")),
    Command("down", ("down", "volume down", "turn it down")),
    Command("stop", ("stop", "stop the music")),
    Command("go", ("go", "start")),
    Command("lights_on", ("turn on the lights", "lights on")),
    Command("lights_off", ("turn off the lights", "lights off")),
    Command("what_time", ("what time is it",)),
    Command("weather", ("what is the weather",)),
    Command("play_music", ("play some music", "play music")),
    Command("pause", ("pause",)),
)

COMMAND_WORDS: tuple[str, ...] = tuple(c.name for c in COMMANDS if " " not in c.name and "_" not in c.name)


def command_phrases() -> tuple[str, ...]:
    """Every phrase of every command, in a stable order without duplicates."""
    seen: dict[str, None] = {}
    for c in COMMANDS:
        for p in c.phrases:
            seen.setdefault(p, None)
    return tuple(seen)


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, single spaces: the form phrases are compared in."""
    kept = "".join(ch if ch.isalnum() or ch.isspace() or ch == "'" else " " for ch in text.lower())
    return " ".join(kept.split())


def wake_phrase(text: str) -> str:
    """``text`` normalised; a ValueError if nothing is left (for recipe validators)."""
    phrase = normalise(text)
    if not phrase:
        raise ValueError("the wake phrase is empty")
    return phrase


def match_command(transcript: str) -> Command | None:
    """The command whose phrase is the whole normalised transcript, else the longest phrase it contains.

    The longest match wins so "turn on the lights" is lights_on, not on.
    """
    t = normalise(transcript)
    if not t:
        return None
    best: tuple[int, Command] | None = None
    padded = f" {t} "
    for c in COMMANDS:
        for p in c.phrases:
            if p == t:
                return c
            if f" {p} " in padded and (best is None or len(p) > best[0]):
                best = (len(p), c)
    return best[1] if best else None
