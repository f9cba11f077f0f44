"""Denoisers: the protocol, a small transformer, and an adapter for HF masked LMs."""

from dflow.models.protocol import Denoiser

__all__ = ["Denoiser"]
