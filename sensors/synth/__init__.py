"""Synthetic training data: TTS engines, confusables, noise, rooms, augmentation, and the
``gate-data synth`` corpus builder."""
