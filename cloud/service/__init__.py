"""`gate-cloud serve`: the verifier service behind an MQTT shared subscription.

broker_client (the only paho user) -> handler (validate, dedupe, models, commit) -> worker (publish
the verdict, then acknowledge); supervisor runs N workers and restarts them under their index;
models holds the protocols the cloud models are used through. Nothing is imported here, so
`gate-cloud train` does not need the service's dependencies.
"""
