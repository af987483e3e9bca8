"""The `kws:` section of the thresholds file: which model and how its posteriors become detections."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from gate.fedstore import BACKGROUND_SHARE, CAPACITY
from gate_core.strict import Strict


def _directory(v: str) -> str:
    if not v.strip():
        raise ValueError("give a directory path")
    return v


Directory = Annotated[str, AfterValidator(_directory)]  # a directory the node writes to: not blank


class SecondStageConfig(Strict):
    """The on-node second stage (Pi-class nodes): speech embeddings check each candidate before upload.

    It runs only on the segment around a tiny-model candidate. Off on MCU profiles, which cannot run it."""

    enabled: bool = Field(
        False, description="Check every tiny-model candidate on the node with the speech-embedding model; a "
                           "rejected candidate is not uploaded (needs openwakeword==0.5.1 installed, and an "
                           "energy profile that prices second_stage)")
    model_path: str | None = Field(
        None, description="Embedding-head .tflite; null = the shipped gate/models/second_stage.tflite")
    threshold: float | None = Field(
        None, gt=0.0, lt=1.0, description="Accept at or above this score; null = the model card's threshold")


class OtaConfig(Strict):
    """Signed over-the-air model releases (docs/ota.md): off until public_key names the cloud's key."""

    public_key: str | None = Field(
        None, description="Ed25519 public key (PEM, from gate-cloud keygen) whose signed releases this node "
                          "installs from <topic_prefix>/fleet/model and <topic_prefix>/<node_id>/model; null = "
                          "over-the-air updates off")
    model_dir: Directory = Field(
        "~/.local/state/gate/models", description="Where installed models, the previous one and the state file "
                                                  "naming the active model are kept")
    self_test: str | None = Field(
        None, description="Directory with selftest.json and its clips a release must pass (wake clips detected, "
                          "reject clips not); null = the shipped gate/selftest")

    @field_validator("public_key", "self_test")
    @classmethod
    def _path_or_null(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("give a file path or null")
        return v


class FederatedConfig(Strict):
    """Feature windows labelled by the cloud's verdicts, kept on the node for fine-tuning (docs/federated.md)."""

    enabled: bool = Field(
        False, description="Keep the model's int8 input windows around each uploaded segment's fire, labelled by "
                           "its verdict (accepted: positives, rejected: hard negatives); never audio. Needs a model "
                           "with an int8 input")
    store_dir: Directory = Field(
        "~/.local/state/gate/fedstore", description="Where the store (fedstore.npz) is kept; it is reopened at "
                                                    "every start")
    capacity: int = Field(
        CAPACITY, ge=1, description="Windows kept, oldest overwritten (a 100 x 40 window is 4000 bytes)")
    background_share: float = Field(
        BACKGROUND_SHARE, ge=0.0, lt=1.0,
        description="Share of the capacity kept for background windows (scored low, no fire near them, at most "
                    "one per 6 s of audio); the labelled windows get the rest")

    @model_validator(mode="after")
    def _room_for_labels(self) -> FederatedConfig:
        if self.capacity - round(self.capacity * self.background_share) < 1:
            raise ValueError(f"capacity {self.capacity} with background_share {self.background_share} leaves no "
                             "room for labelled windows")
        return self


class KwsConfig(Strict):
    """The tiny keyword spotter on the node and its detector."""

    model_path: str | None = Field(
        None, description="int8 .tflite model; null = the shipped default for feature_kind (gate/models/)")
    feature_kind: Literal["logmel", "analog_envelopes", "pcen"] = Field(
        "logmel", description="Model input: 40-band log-mel from the 16 kHz ADC, the same with per-channel "
                              "energy normalisation (pcen; no shipped model, set model_path), or the analog "
                              "front end's channel envelopes (no ADC needed)")
    threshold: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="Smoothed posterior at or above which an inference counts as a hit; null = the value "
                    "tuned for the model (its card's detector.threshold)")
    smoothing_s: float = Field(
        0.09, ge=0.0, le=2.0, description="Moving-average window over the posterior, audio seconds (0 = none)")
    min_consecutive: int = Field(
        2, ge=1, le=50, description="Consecutive hit inferences needed to fire")
    refractory_s: float = Field(
        1.5, ge=0.0, le=30.0, description="After a detection, further hits are ignored for this long, audio seconds")
    stride_frames: int = Field(
        3, ge=1, le=20, description="Feature frames between inferences (3 x 10 ms = one inference every 30 ms)")
    second_stage: SecondStageConfig = Field(
        default_factory=SecondStageConfig,
        description="On-node check of each candidate on speech embeddings before upload (Pi-class nodes)")
    ota: OtaConfig = Field(default_factory=OtaConfig,
                           description="Signed over-the-air releases of this model (the cloud's public key)")
    federated: FederatedConfig = Field(
        default_factory=FederatedConfig,
        description="Labelled feature windows kept on the node for federated fine-tuning (off by default)")

    @model_validator(mode="after")
    def _smoothing_covers_inferences(self) -> KwsConfig:
        # A smoothing window shorter than one inference stride would silently mean "no smoothing".
        if 0.0 < self.smoothing_s < self.stride_frames * 0.01:
            raise ValueError(f"smoothing_s={self.smoothing_s} is shorter than one inference stride "
                             f"({self.stride_frames * 0.01:.2f} s); use 0 to disable smoothing")
        return self
