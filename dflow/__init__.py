"""dflow: reinforcement-learning fine-tuning of discrete flow and discrete diffusion models."""

__version__ = "0.1.0"
