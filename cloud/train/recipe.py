"""The training recipe: everything `gate-cloud train` needs to rebuild the three models from nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from gate_core.cliutil import yaml_error_text
from gate_core.errors import ConfigError
from gate_core.strict import Strict
from sensors.synth import augment, tts

FeatureKind = Literal["logmel", "analog_envelopes", "pcen"]
FEATURE_KINDS: tuple[str, ...] = get_args(FeatureKind)


class AccentSpec(Strict):
    """A voice of another language saying the phrase as its speakers would: the phrase respelled in that
    language's spelling (Italian "ei giarvis" for "hey jarvis"). Training only: accented speakers."""

    voice: str = Field(..., min_length=3, description="engine:name of a voice of any language, e.g. pico:it-IT")
    phrase: str = Field(..., min_length=2, description="The wake phrase respelled for that voice")

    @field_validator("voice")
    @classmethod
    def _engine_name(cls, v: str) -> str:
        engine, _, name = v.partition(":")
        if engine not in ("espeak", "mbrola", "pico", "rhvoice") or not name:
            raise ValueError(f"{v!r}: expected engine:name, engine one of espeak, mbrola, pico, rhvoice")
        _not_excluded(v)
        return v


def _not_excluded(voice: str) -> None:
    """RHVoice's CMU ARCTIC speakers (sensors.synth.tts.RHVOICE_EXCLUDED) fail the recipe on load."""
    engine, _, name = voice.partition(":")
    if engine == "rhvoice" and tts.rhvoice_excluded(name.partition("+")[0]):
        raise ValueError(f"{voice!r} is a CMU ARCTIC speaker, kept out of the speech data: never used")


def _ordered(name: str, v: tuple[float, float], lo: float, hi: float) -> tuple[float, float]:
    if not lo <= v[0] <= v[1] <= hi:
        raise ValueError(f"{name} {list(v)}: need {lo} <= low <= high <= {hi}")
    return v


class CorpusSpec(Strict):
    """What to synthesise. Voices listed in eval_voices are never trained on."""

    positives: int = Field(2400, ge=10, le=200_000, description="Wake-phrase renders")
    confusables: int = Field(1200, ge=0, le=200_000, description="Renders of phonetic near-misses")
    speech: int = Field(1500, ge=0, le=200_000, description="Renders of other speech (random sentences)")
    command_renders: int = Field(1500, ge=0, le=200_000, description="Renders of command phrases")
    rate_wpm: tuple[int, int] = Field((130, 220), description="Speaking-rate range, espeak words per minute")
    pitch: tuple[int, int] = Field((25, 80), description="Pitch range, espeak 0..99")
    engines: list[Literal["espeak", "mbrola", "pico", "rhvoice"]] = Field(["espeak", "mbrola", "pico"])
    eval_voices: list[str] = Field(
        ["espeak:en-gb-x-gbcwmd", "mbrola:mb-us3", "mbrola:mb-de5-en", "pico:en-GB"],
        description="Held out from training; evaluation scenes speak only with these")
    exclude_voices: list[str] = Field(
        [], description="Voices used nowhere (neither trained on nor in the evaluation), e.g. to measure what "
                        "fewer training voices cost; engine:name ids as in eval_voices")
    workers: int = Field(2, ge=1, le=16, description="Parallel TTS processes")
    accents: list[AccentSpec] = Field([], description="Accented speakers: other-language voices, phrase respelled")
    accent_share: float = Field(
        0.0, ge=0.0, le=0.9, description="Share of wake-phrase and other-speech renders given to the accents")
    random_variants: int = Field(
        0, ge=0, le=100_000, description="Random espeak-ng variants (pseudo-speakers) drawn from random_variant_seed "
                                         "for the training voices; 0 = off")
    random_variant_seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the random variants' voice files")
    random_variant_share: float = Field(
        0.75, ge=0.0, le=1.0, description="With random_variants: share of espeak training renders given a random "
                                          "variant (the rest keep the stock variants half the time)")

    @model_validator(mode="after")
    def _speaker_sources(self) -> CorpusSpec:
        for v in self.eval_voices:
            _not_excluded(v)
        if self.random_variants and "espeak" not in self.engines:
            raise ValueError(f"random_variants {self.random_variants} needs the espeak engine in engines")
        return self

    @model_validator(mode="after")
    def _accents_not_held_out(self) -> CorpusSpec:
        clash = sorted({a.voice for a in self.accents} & set(self.eval_voices))
        if clash:
            raise ValueError(f"accent voice(s) {clash} are held out for evaluation (eval_voices)")
        clash = sorted(set(self.exclude_voices) & set(self.eval_voices))
        if clash:
            raise ValueError(f"exclude_voices {clash} are also eval_voices: a voice is either evaluated or excluded")
        if self.accent_share > 0 and not self.accents:
            raise ValueError("accent_share > 0 needs at least one entry in accents")
        return self


class AugmentSpec(Strict):
    copies: int = Field(2, ge=1, le=10, description="Augmented copies of each training render")
    snr_db: tuple[float, float] = Field((0.0, 25.0), description="Speech-to-noise ratio range, dB")
    reverb_prob: float = Field(0.5, ge=0.0, le=1.0)
    gain_db: tuple[float, float] = Field((-20.0, 0.0), description="Level range of the mixed clip, dB re -3 dBFS peak")
    speed_prob: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of renders speed-perturbed (pitch, formants, tempo)")
    speed: tuple[float, float] = Field((0.85, 1.15), description="Speed-perturbation factor range")
    world_prob: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of training renders turned into another speaker with the WORLD "
                                         "vocoder (sensors/synth/voicex.py) before the other augmentation; 0 = off")
    world_f0_semitones: tuple[float, float] = Field((-4.0, 4.0), description="WORLD: F0 shift range, semitones")
    world_f0_range: tuple[float, float] = Field(
        (0.7, 1.4), description="WORLD: range of the scale of F0 movement around its mean (intonation)")
    world_alpha: tuple[float, float] = Field(
        (0.85, 1.2), description="WORLD: spectral-envelope frequency-warp range (vocal-tract length; > 1 shorter)")
    world_aperiodicity_db: tuple[float, float] = Field(
        (-6.0, 6.0), description="WORLD: aperiodicity change range, dB (> 0 breathier)")
    vtlp_prob: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of the tiny model's training clips featurised through a "
                                         "vocal-tract-length-perturbed mel bank (gate.features.vtlp_warp); 0 = off")
    vtlp_alpha: tuple[float, float] = Field((0.9, 1.1), description="VTLP warp-factor range")
    backgrounds: tuple[str, ...] = Field(
        augment.TRAIN_BACKGROUNDS, min_length=1,
        description=f"Background kinds of the training clips, drawn evenly (known: {', '.join(augment.BACKGROUNDS)})")
    channel_prob: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of training clips heard through another channel (telephone "
                                         "band, a low-pass or high-pass microphone, an 8 kHz source; "
                                         "sensors.synth.augment.channel); 0 = off")

    @field_validator("backgrounds")
    @classmethod
    def _backgrounds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(v) - set(augment.BACKGROUNDS))
        if unknown:
            raise ValueError(f"unknown background kind(s) {unknown} (known: {', '.join(augment.BACKGROUNDS)})")
        return v

    @field_validator("world_f0_semitones")
    @classmethod
    def _f0_semitones(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered("world_f0_semitones", v, -12.0, 12.0)

    @field_validator("world_f0_range")
    @classmethod
    def _f0_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered("world_f0_range", v, 0.0, 3.0)

    @field_validator("world_alpha")
    @classmethod
    def _alpha(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered("world_alpha", v, 0.7, 1.4)

    @field_validator("vtlp_alpha")
    @classmethod
    def _vtlp_alpha(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered("vtlp_alpha", v, 0.8, 1.25)

    @field_validator("world_aperiodicity_db")
    @classmethod
    def _aperiodicity(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered("world_aperiodicity_db", v, -20.0, 20.0)


class ModelSpec(Strict):
    window_frames: int = Field(..., ge=10, le=400, description="Feature frames the model sees (10 ms each)")
    stem: int = Field(..., ge=4, le=512, description="Channels of the first (strided) convolution")
    blocks: list[tuple[int, int]] = Field(..., description="(channels, stride) of each depthwise-separable block")
    kernel: int = Field(7, ge=3, le=31, description="Depthwise kernel length, frames")
    epochs: int = Field(20, ge=1, le=500)
    batch: int = Field(128, ge=8, le=4096)
    lr: float = Field(3e-3, gt=0.0, le=1.0)
    dropout: float = Field(0.1, ge=0.0, le=0.9)
    band_dropout: float = Field(
        0.0, ge=0.0, le=0.5, description="Training-time dropout of whole feature bands (SpecAugment-style masking)")
    input_noise: float = Field(0.0, ge=0.0, le=1.0, description="Training-time Gaussian noise on standardised features")
    prune_sparsity: float = Field(
        0.0, ge=0.0, lt=1.0, description="Also report a magnitude-pruned copy with this share of kernel weights zero")
    prune_epochs: int = Field(3, ge=0, le=100, description="Fine-tuning epochs of the pruned copy, zeros held")
    bn_momentum: float = Field(
        0.9, ge=0.5, lt=1.0, description="Batch-norm moving-average momentum; 0.99 needs thousands of steps to settle")
    int8_output: Literal["probability", "logit"] = Field(
        "probability", description="What a binary int8 model outputs: the sigmoid (256 levels in [0, 1]: the "
                                   "top one holds every confident window) or the logit, which the node turns "
                                   "into a probability in float and which keeps its resolution near 1")
    seed_per_model: bool = Field(
        False, description="Seed each model from (seed, its name) before it is built, so a model comes out the "
                           "same whichever other models the run trains (--only)")


class CommandSpec(ModelSpec):
    """The command recogniser: it reads ``window_frames`` from the node's fire time, and the command starts
    somewhere in there (the pause after the phrase, less the detector's delay)."""

    start_s: tuple[float, float] = Field(
        (0.0, 0.3), description="Range of where the command starts in a training clip, s from the window's start "
                                "(the fire time); below 0 the fire came after the command began and its start is cut")

    scene_minutes: float = Field(
        0.0, ge=0.0, le=120.0, description="Minutes per scene kind of scenes spoken by training voices whose "
                                           "command windows (read from a simulated fire time) join the clips")

    @field_validator("start_s")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not -0.5 <= v[0] <= v[1] <= 1.5:
            raise ValueError(f"start_s {list(v)}: need -0.5 <= low <= high <= 1.5 s")
        return v


class StreamSpec(Strict):
    """Long training streams built like the evaluation scenes, spoken by training voices only.

    Clips teach what the phrase sounds like; streams teach where the detector must stay quiet: every
    position of every sentence, babble and clatter, as the node meets them once every 30 ms."""

    minutes: float = Field(20.0, ge=0.0, le=600.0, description="Minutes per scene kind to train on (0 = clips only)")
    keywords_per_hour: float = Field(240.0, ge=1.0, le=450.0)
    confusables_per_hour: float = Field(60.0, ge=0.0, le=450.0)
    talk_gap_s: float = Field(2.0, gt=0.0, le=60.0, description="Mean gap between other-talk utterances, s")
    level_jitter_db: float = Field(10.0, ge=0.0, le=30.0, description="Background level varies +-this per minute")
    positive_every: int = Field(3, ge=1, le=30, description="Train on every n-th window end in a firing zone")
    negative_every: int = Field(8, ge=1, le=1000, description="Train on about 1 in n negative window ends")
    real_speech: bool = Field(True, description="Mix the recorded speech of datasets/real_speech into other talk")
    mine_minutes: float = Field(
        20.0, ge=0.0, le=600.0, description="Minutes per scene kind of fresh mining streams (0 = no mining)")
    mine_threshold: float = Field(
        0.2, gt=0.0, lt=1.0, description="Mined: negatives the first model scores this high")
    mine_limit: int = Field(20_000, ge=0, le=1_000_000, description="At most this many mined negatives")
    mine_epochs: int = Field(4, ge=0, le=100, description="Fine-tuning epochs with the mined negatives added")


class EmbeddingHeadSpec(Strict):
    """A classifier on the speech-embedding front end (gate/kws/embedding.py): the cloud verifier v2
    and the node's second stage. It sees ``window`` embeddings (80 ms apart; 16 cover 2.0 s)."""

    window: int = Field(16, ge=1, le=64, description="Embeddings the head sees (16 = 2.0 s of audio)")
    kind: Literal["conv", "dense"] = Field(
        "conv", description="conv: dilated convolutions along the embeddings (1, 2, 4...), then one dense layer; "
                            "dense: the window flattened into dense layers, as openWakeWord's heads are")
    hidden: int = Field(64, ge=8, le=2048, description="Channels of each convolution, or units of each dense layer")
    layers: int = Field(3, ge=1, le=6, description="Convolutions (conv) or hidden dense layers (dense)")
    epochs: int = Field(20, ge=1, le=500)
    batch: int = Field(256, ge=8, le=8192)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    dropout: float = Field(0.5, ge=0.0, le=0.9)
    mine_epochs: int = Field(4, ge=0, le=100, description="Fine-tuning epochs with mined negatives added (0 = none)")
    seed_per_model: bool = Field(True, description="Seed this model's training from the recipe seed and its name")


class DistillSpec(Strict):
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the hard label; 1 - alpha goes to the teacher")
    teacher: Literal["verifier", "verifier_v2"] = Field(
        "verifier_v2", description="Whose soft labels --teacher distils into the tiny model: the log-mel verifier "
                                   "or verifier v2 (speech embeddings learned from real speech)")


class EvalSpec(Strict):
    scenes: list[Literal["quiet_home", "noisy_kitchen", "office_babble"]] = Field(
        ["quiet_home", "noisy_kitchen", "office_babble"])
    minutes: float = Field(60.0, gt=0.0, le=600.0, description="Length of each evaluation scene, minutes")
    keywords_per_hour: float = Field(60.0, ge=1.0, le=600.0)
    confusables_per_hour: float = Field(
        10.0, ge=0.0, le=600.0, description="Near-misses of the phrase per hour of scene (counted as false accepts)")
    verifier_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    # What the held-out voices render, once, for the scenes and test clips to draw from. Fixed here
    # (not derived from the training corpus) so that a bigger training corpus meets the same test.
    positive_renders: int = Field(200, ge=10, le=100_000, description="Held-out wake-phrase renders")
    confusable_renders: int = Field(100, ge=0, le=100_000, description="Held-out near-miss renders")
    speech_renders: int = Field(187, ge=10, le=100_000, description="Held-out other-speech renders")
    command_renders: int = Field(125, ge=10, le=100_000, description="Held-out command renders")
    dev_fa_per_hour: float = Field(
        1.0, ge=0.0, le=100.0, description="False accepts per hour allowed on the dev scenes when tuning the threshold")
    tune_for: Literal["tiny", "cascade"] = Field(
        "tiny", description="Tune the node's threshold for the tiny model alone (its false accepts within "
                            "dev_fa_per_hour) or for the cascade (the verified ones within dev_fa_per_hour, "
                            "the node's uploads within dev_uploads_per_hour)")
    dev_uploads_per_hour: float = Field(
        10.0, ge=0.0, le=1000.0, description="cascade tuning: false wakes per hour the node may upload for the "
                                             "cloud to reject (each costs a segment's radio and cloud energy)")


class Recipe(Strict):
    name: str = Field(..., pattern=r"^[a-z0-9_]+$")
    phrase: str = Field(..., min_length=2)
    seed: int = Field(1234, ge=0)
    clip_s: float = Field(2.0, ge=1.0, le=4.0, description="Training clip length; the verifier sees all of it")
    corpus: CorpusSpec = Field(default_factory=CorpusSpec)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    tiny: ModelSpec
    verifier: ModelSpec
    commands: CommandSpec
    streams: StreamSpec = Field(default_factory=StreamSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    verifier_v2: EmbeddingHeadSpec = Field(default_factory=EmbeddingHeadSpec)
    feature_kinds: list[FeatureKind] = Field(["logmel", "analog_envelopes"])
    evaluation: EvalSpec = Field(default_factory=EvalSpec)
    cpu_watts: float = Field(
        7.5, gt=0.0, le=500.0, description="Power charged per busy CPU core for the training energy figure, W")


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such recipe", code="recipe_missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the recipe ({getattr(exc, 'strerror', None) or exc})",
                          code="recipe_invalid") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}{yaml_error_text(exc)}", code="recipe_invalid") from None
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = [f"{p}: {'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise ConfigError("\n".join(lines), code="recipe_invalid") from None
