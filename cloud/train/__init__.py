"""Training the tiny KWS, the verifier and the command recogniser from a recipe (`gate-cloud train`)."""
