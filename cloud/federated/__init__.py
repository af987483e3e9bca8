"""Federated fine-tuning of the tiny keyword spotter on Flower (`gate-cloud federate`)."""
