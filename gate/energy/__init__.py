"""Energy metering: a ledger that counts per stage, and a model that prices counts per device.

Counting and pricing are separate so a saved snapshot can be re-priced for another profile
without re-running the audio.
"""

from gate_core.ledger import (
    ADC,
    ANALOG_GATE,
    CLOUD,
    CROSSBAR,
    ENCODER,
    FEATURES_KWS,
    HOST,
    RADIO,
    SECOND_STAGE,
    STAGES,
    EnergyLedger,
    LedgerSnapshot,
    StageCounts,
    validate_stage,
)

from .baselines import DEFAULT_PACKET_S, always_on_kws_counts, always_stream_counts
from .model import (
    DeviceProfile,
    EnergyBreakdown,
    EnergyModel,
    StagePower,
    joules_to_co2e_g,
    list_profiles,
    load_profile,
    parse_profile,
    savings,
)
from .wire import DEFAULT_TOPIC_LEN, mqtt_publish_b, wire_bytes

__all__ = [
    "ADC",
    "ANALOG_GATE",
    "CLOUD",
    "CROSSBAR",
    "DEFAULT_PACKET_S",
    "DEFAULT_TOPIC_LEN",
    "DeviceProfile",
    "ENCODER",
    "EnergyBreakdown",
    "EnergyLedger",
    "EnergyModel",
    "FEATURES_KWS",
    "HOST",
    "LedgerSnapshot",
    "RADIO",
    "SECOND_STAGE",
    "STAGES",
    "StageCounts",
    "StagePower",
    "always_on_kws_counts",
    "always_stream_counts",
    "joules_to_co2e_g",
    "list_profiles",
    "load_profile",
    "mqtt_publish_b",
    "parse_profile",
    "savings",
    "validate_stage",
    "wire_bytes",
]
