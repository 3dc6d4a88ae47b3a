"""Evaluation harness: LFW verification, open-set identification, calibration data."""
