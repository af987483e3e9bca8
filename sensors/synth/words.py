"""Non-keyword speech for negatives: common words, everyday phrases, other assistants' wake
words, and the command vocabulary spoken without the wake word (which must not wake the node)."""

from __future__ import annotations

from gate_core.vocabulary import command_phrases, normalise

COMMON_WORDS = (
    "yes no maybe hello hi okay thanks please sorry right left today tomorrow yesterday morning "
    "evening night kitchen garden window door table chair coffee water dinner breakfast lunch "
    "music movie phone computer keyboard paper pencil number seven eight nine zero one two three "
    "four five six ten hundred thousand red green blue yellow orange purple black white happy "
    "really never always sometimes again later early quickly slowly travel harvest service "
    "nervous marvel garbage carpet party market parking jargon jarring jasmine javelin javascript "
    "heavy happen hazy hated harvey jervis davis mavis avis travis purpose office"
).split()

PHRASES = (
    "what are you doing", "see you later", "i'll be right back", "how was your day",
    "where are my keys", "it's raining again", "pass the salt please", "let's go for a walk",
    "did you feed the cat", "the meeting starts at nine", "can you hear me", "i don't know",
    "that sounds good", "hey there", "hey you", "hey guys", "hey jack", "hey james", "hey charles",
    "hey buddy", "a service", "harvest moon", "jar of jam", "hey look at this",
)

OTHER_WAKE_WORDS = ("alexa", "hey siri", "ok google", "hey google", "computer", "hey mycroft", "hey rhasspy")


def default_negatives() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for t in (*COMMON_WORDS, *PHRASES, *OTHER_WAKE_WORDS, *command_phrases()):
        seen.setdefault(normalise(t), None)
    return tuple(seen)
