"""The paper's baselines, compact and readable, for the comparison in results/RESULTS.md.

Transfer: CycleGAN (Zhu et al. 2017) and UNIT (Liu et al. 2017), one model per style pair,
and a MusicVAE-style latent-swap VAE (an audio-domain adaptation of Roberts et al. 2018).
Vocoders: WaveNet (van den Oord et al. 2016) and WaveRNN (Kalchbrenner et al. 2018),
autoregressive, conditioned on the log-mel.

Nothing in the main pipeline imports this package. train.py reaches it through two calls:

    python train.py --stage baselines [--baseline NAME]   -> baselines.<NAME>.train(args, cfg, kit)
    python train.py --stage eval --rows baselines          -> baselines.<NAME>.systems(...)

Each module defines
    KIND = "transfer" or "vocoder"
    train(args, cfg, kit): train on args.data, write CKPT_DIR/baselines/<NAME>.pt
    systems(ckpt_dir, cfg, logmel, styles, waves): {row name: system} for
        metrics.score_system, or {} when its checkpoint is missing; waves are the test clips
        ({(piece, style): wave}) the rows will be asked for. A transfer system may set .pairs (a set of
        (source, target) style pairs) to be scored on those pairs only.
`kit` carries train.py's shared pieces (train_loop, its options from args, audio_splits,
setup_distributed), so
that no module here imports an entry point.
"""
import importlib
from pathlib import Path

import config

NAMES = ("cyclegan", "unit", "musicvae", "wavenet", "wavernn")


def module(name):
    if name not in NAMES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"baselines.{name}")


def load_checkpoint(ckpt_dir, name, audio):
    """(checkpoint, its Config) of CKPT_DIR/baselines/NAME.pt, or None when there is none;
    one made for another log-mel front end than `audio` (the evaluation's) is a ValueError."""
    path, stage = Path(ckpt_dir) / "baselines" / f"{name}.pt", f"baselines --baseline {name}"
    if not path.is_file():
        return None
    ckpt = config.load_checkpoint(path, stage)
    cfg = config.config_from_dict(ckpt["config"])
    if cfg.audio != audio:
        raise ValueError(f"the {name} checkpoint was trained on another log-mel front end; "
                         f"retrain it with `python train.py --stage {stage}`")
    return ckpt, cfg
