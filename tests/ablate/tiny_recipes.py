"""Tiny RL recipes for the ablate tests (no base checkpoint: a fresh width-16 denoiser).

The shapes task is shrunk to 8x8 images and a handful of prompts, evaluation to 8 prompts with a
4-step sampler, so a whole run is one or two RL steps on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# Two methods that differ in their likelihood, objective and KL (method "elbo" has no KL penalty,
# so its KL column stays blank). Every other setting is shared, as a fair grid requires.
LIKELIHOODS = {
    "udm": {
        "likelihood": {
            "class_path": "dflow.rl.ForwardReconstruction",
            "init_args": {"num_timesteps": 2},
        },
        "objective": {"class_path": "dflow.rl.ClippedSurrogate", "init_args": {"eps_low": 1.0e-4}},
        "kl": {"class_path": "dflow.rl.KLPenalty", "init_args": {"beta": 0.05, "estimator": "k3"}},
    },
    "elbo": {
        "likelihood": {"class_path": "dflow.rl.ELBOLikelihood", "init_args": {"num_timesteps": 2}},
        "objective": {"class_path": "dflow.rl.EPG"},
        "kl": {"class_path": "dflow.rl.KLPenalty", "init_args": {"beta": 0.0}},
    },
}


def rl_recipe(method: str = "udm", data_seed: int = 0) -> dict:
    """An RLModule recipe (LightningCLI YAML as a dict) for a tiny model on a tiny shapes task."""
    return {
        "seed_everything": 0,
        "trainer": {
            "max_steps": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
        },
        "model": {
            "class_path": "dflow.lightning.rl_module.RLModule",
            "init_args": {
                "denoiser": {
                    "class_path": "dflow.lightning.builders.TransformerDenoiser",
                    "init_args": {"hidden_size": 16, "num_layers": 1, "num_heads": 2},
                },
                "path": {
                    "class_path": "dflow.paths.MixturePath",
                    "init_args": {
                        "source": {
                            "class_path": "dflow.paths.UniformSource",
                            "init_args": {"vocab_size": 7},
                        },
                        "scheduler": {"class_path": "dflow.paths.LinearScheduler"},
                    },
                },
                **LIKELIHOODS[method],
                "advantage": {"class_path": "dflow.rl.GroupAdvantage", "init_args": {"clip": 5.0}},
                "rollout": {"num_steps": 4, "group_size": 2},
                "evaluation": {"num_steps": 4, "every_n_steps": 0, "num_prompts": 8, "num_grid_prompts": 2},
                "rewards": [{"source": "task", "weight": 1.0}],
            },
        },
        "data": {
            "class_path": "dflow.lightning.data.PromptDataModule",
            "init_args": {
                "task": {
                    "class_path": "dflow.tasks.ShapesTask",
                    "init_args": {
                        "height": 8,
                        "width": 8,
                        "pretrain_prompts_per_category": 4,
                        "test_prompts_per_category": 2,
                        "render_scale": 2,
                    },
                },
                "prompts_per_step": 2,
                "seed": data_seed,
            },
        },
    }


def write_yaml(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
