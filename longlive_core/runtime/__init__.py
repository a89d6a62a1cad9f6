"""Generating a video: the denoising schedule and noise, prompt text, the streaming session, the owner of a named
video (video.py) and the registry that keeps named videos between runs."""
