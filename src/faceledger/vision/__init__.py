"""Decode, detect, align, assess quality and embed faces."""
