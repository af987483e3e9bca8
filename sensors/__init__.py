"""Where audio comes from: files, the microphone, synthetic scenes, and the simulated analog front end."""
