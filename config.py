"""Configuration: one small dataclass per component, presets, and checkpoint files.

Every default works on a CPU. Models never read a config themselves: the entry points
(train.py, transfer.py) build the pieces from these values and pass plain arguments.

    Config = AudioConfig (signal front end) + DataConfig (built-in dataset)
"""
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

CHECKPOINT_FORMAT = 1


@dataclass
class AudioConfig:
    """The signal front end shared by every stage (stft.LogMel takes these as keywords)."""
    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 256            # 16 ms frames: T = 1 + N // hop spectrogram frames
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = 8000.0
    log_floor: float = 1e-5   # log(1e-5) = -11.5 is the silence level
    # Fixed global normalisation of log-mel (never per clip, so loudness survives a
    # round trip): measured once over the built-in training split, see README.
    norm_mean: float = -4.5
    norm_std: float = 2.1


@dataclass
class DataConfig:
    """The built-in dataset: seeded compositions rendered in every style."""
    pieces: int = 500         # split by piece: ~80% train, 10% val, 10% test
    seconds: float = 12.0     # length of each rendered piece
    seed: int = 0
    clip_seconds: float = 4.0  # training clips cut from the pieces


@dataclass
class TrainingConfig:
    """What the shared loop (train.train_loop) reads; each trained stage's config extends
    it and restates only the defaults it changes."""
    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup: int = 200
    ema: float = 0.999
    grad_accum: int = 1


@dataclass
class ClassifierConfig(TrainingConfig):
    """The style classifier that scores every system (metrics.StyleClassifier)."""
    channels: tuple = (16, 32, 64, 128)
    emb_dim: int = 128
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 100
    ema: float = 0.995
    clip_seconds: float = 4.0
    augment: float = 1.0      # the recording chain's chances (augment.Chain.p): judge recordings
    gain_db: float = 6.0      # ... and its random gain: style is not loudness


@dataclass
class AutoencoderConfig(TrainingConfig):
    """The perceptual autoencoder: log-mel (B, 1, 128, T) -> latent (B, 4, 32, T/4)."""
    channels: tuple = (32, 64, 128)   # one level per entry: factor f = 2 ** (len - 1) = 4
    latent_channels: int = 4
    num_res_blocks: int = 1
    kl_weight: float = 1e-6
    spectral_weight: float = 1.0
    adv_weight: float = 0.0           # > 0 turns on the patch discriminator ...
    disc_start: int = 2000            # ... after this many steps
    steps: int = 2200
    lr: float = 5e-4
    clip_seconds: float = 2.0
    augment: float = 0.5              # half the recording chain's chances: encode recordings too
    transfer_latents: float = 0.5     # --decoder-only: share of a batch decoded from transfers'
    transfer_latent_frames: int = 32  # latents (this many frames) against the target render
    transfer_chain: float = 1.0       # ... transferred from recordings of the source render
    junction_weight: float = 3.0      # ... and decoded the same whole or cut in two (junction_gap)
    decoder_norm: str = "group"       # or "fixed": --fix-decoder-norms (autoencoder.FixedNorm)


@dataclass
class LDMConfig(TrainingConfig):
    """The latent diffusion U-Net with cross-attention to style tokens (unet.py)."""
    model_channels: int = 48
    channel_mult: tuple = (1, 2, 2)
    attention: tuple = (False, True, True)   # cross-attention at the two lower levels
    num_res_blocks: int = 1
    context_dim: int = 128
    tokens: int = 4                   # style tokens per style
    heads: int = 4
    dim_head: int = 32
    schedule: str = "cosine"          # rescaled to zero terminal SNR
    timesteps: int = 1000
    prediction: str = "v"
    cond_drop: float = 0.15           # condition dropped for classifier-free guidance
    ref_prob: float = 0.5             # condition on a reference clip instead of the label
    align_weight: float = 0.1         # pull reference tokens onto label tokens
    paired: bool = True               # condition on the source latent (built-in data's pairs)
    source_drop: float = 0.1          # ... dropped (zeros) this often: also p(z | style)
    versions: int = 2                 # recorded versions of each render (augment.Chain), sources
    latent_frames: int = 64           # training crops: 64 latent frames = 4.1 s
    ref_frames: int = 256             # reference clips: 256 spectrogram frames = 4.1 s
    steps: int = 1800


@dataclass
class DistillConfig(TrainingConfig):
    """The few-step student of the LDM (distill.py): the teacher's U-Net plus low-rank
    adapters and a guidance input, trained so that one of its steps lands where two of its
    teacher's guided steps do (one round of progressive distillation)."""
    student_steps: int = 2            # the student's steps; its teacher takes twice as many
    rank: int = 32                    # of the adapters on every convolution and linear layer
    guidance_min: float = 1.0         # w drawn uniformly from this range in training
    guidance_max: float = 5.0
    versions: int = 1                 # recorded versions of each source (the LDM's: 2)
    steps: int = 1500
    batch_size: int = 8
    lr: float = 3e-4
    warmup: int = 100
    ema: float = 0.995


@dataclass
class GuideDiffConfig(TrainingConfig):
    """GuideDiff, the diffusion vocoder (guidediff.py): frame-rate ConvNeXt denoiser."""
    dim: int = 256
    hidden: int = 768
    layers: int = 6
    guide_layers: int = 2
    emb_dim: int = 128
    head_hidden: int = 1024           # the MLP beside the linear output head (0: none)
    p_pure_noise: float = 0.25        # share of training at s = 1, where sampling starts
    mel_weight: float = 1.0           # log-mel L1 beside the multi-resolution STFT loss
    augment: float = 0.5              # the recording chain's chances on the training clips
    round_trip: float = 0.5           # share of the batch guided by an autoencoder round trip
    transfer_guides: float = 0.25     # share guided by a transfer's output log-mel, against
                                      # the target's render (built-in data, CKPT_DIR/ldm.pt)
    search_steps: tuple = (1, 2, 4, 8)   # step counts whose schedule is searched on val
    default_steps: int = 1            # 1-8 steps measure alike (RESULTS.md, val): the cheapest
    projections: int = 16             # mel-consistency projections after the last step
    projection_momentum: float = 0.9  # their fast Griffin-Lim extrapolation (0 = plain)
    clip_seconds: float = 1.0
    steps: int = 6000
    lr: float = 5e-4


@dataclass
class CycleGANConfig(TrainingConfig):
    """CycleGAN baseline (baselines/cyclegan.py): one style pair, two residual generators,
    two PatchGAN discriminators. Its own GAN loop reads steps, batch_size, lr, weight_decay,
    warmup and ema (grad_accum must stay 1)."""
    pair: tuple = ("piano", "rock")
    channels: int = 16            # generator widths c, 2c, 4c; the residual blocks run at 4c
    res_blocks: int = 4
    disc_channels: tuple = (16, 32, 64)
    cycle_weight: float = 10.0    # Zhu et al.'s lambda
    identity_weight: float = 1.0  # theirs is 5 (Sec. 5.2); 5 pins G to the identity here
    clip_seconds: float = 1.0
    steps: int = 1000
    batch_size: int = 4
    lr: float = 2e-4
    warmup: int = 0
    ema: float = 0.99


@dataclass
class UNITConfig(TrainingConfig):
    """UNIT baseline (baselines/unit.py): shared-latent VAE-GAN for one style pair; loss
    weights from the UNIT authors' configs."""
    pair: tuple = ("piano", "rock")
    channels: int = 16            # widths c, 2c, 4c; the latent has 4c channels at F/4 x T/4
    res_blocks: int = 2           # per encoder and decoder, one of them shared by the pair
    disc_channels: tuple = (16, 32, 64)
    gan_weight: float = 1.0
    recon_weight: float = 10.0
    kl_weight: float = 0.01
    cycle_weight: float = 10.0
    cycle_kl_weight: float = 0.01
    clip_seconds: float = 1.0
    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup: int = 0
    ema: float = 0.99


@dataclass
class MusicVAEConfig(TrainingConfig):
    """MusicVAE-style baseline (baselines/musicvae.py): a conditional VAE over log-mel frames
    with a style code; transfer swaps the code."""
    hidden: int = 160
    latent_channels: int = 16     # per latent frame, one every 4 spectrogram frames
    style_dim: int = 32
    kl_weight: float = 1.0        # on the KL in nats per spectrogram value
    clip_seconds: float = 4.0
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    ema: float = 0.995


@dataclass
class WaveNetConfig(TrainingConfig):
    """WaveNet baseline vocoder (baselines/wavenet.py): gated dilated causal layers,
    8-bit mu-law softmax, conditioned on the log-mel; teacher-forced on short windows."""
    channels: int = 32            # residual channels
    skip_channels: int = 64
    cond_dim: int = 64
    cycles: int = 2               # dilations 1 .. 2 ** (layers_per_cycle - 1), repeated
    layers_per_cycle: int = 8     # receptive field 1 + 2 x 255 = 511 samples (32 ms)
    clip_seconds: float = 1.0     # the clip whose log-mel conditions ...
    window_seconds: float = 0.25  # ... the window trained on inside it
    steps: int = 800              # about 13 minutes on one CPU thread
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 50
    ema: float = 0.995


@dataclass
class WaveRNNConfig(TrainingConfig):
    """WaveRNN baseline vocoder (baselines/wavernn.py): one GRU over samples, 8-bit mu-law
    softmax (no coarse/fine split), conditioned on the log-mel."""
    hidden: int = 256
    embed_dim: int = 64           # previous sample's class
    cond_dim: int = 64
    fc_dim: int = 256
    clip_seconds: float = 1.0
    window_seconds: float = 0.0625   # 1000 samples: a GRU step per sample is the cost
    steps: int = 550              # about 13 minutes on one CPU thread
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 50
    ema: float = 0.995


@dataclass
class Config:
    audio: AudioConfig = field(default_factory=AudioConfig)
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    ldm: LDMConfig = field(default_factory=LDMConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    guidediff: GuideDiffConfig = field(default_factory=GuideDiffConfig)
    cyclegan: CycleGANConfig = field(default_factory=CycleGANConfig)
    unit: UNITConfig = field(default_factory=UNITConfig)
    musicvae: MusicVAEConfig = field(default_factory=MusicVAEConfig)
    wavenet: WaveNetConfig = field(default_factory=WaveNetConfig)
    wavernn: WaveRNNConfig = field(default_factory=WaveRNNConfig)


def paper_config():
    """A GPU-sized model, closer to latent diffusion's audio set-ups: wider networks, longer
    clips and many more steps. Untested here (no GPU); the shapes are the tiny preset's."""
    return Config(
        classifier=ClassifierConfig(channels=(32, 64, 128, 256), emb_dim=256, steps=5000,
                                    batch_size=64),
        autoencoder=AutoencoderConfig(channels=(128, 256, 512), num_res_blocks=2, steps=100_000,
                                      batch_size=32, lr=2e-4, clip_seconds=4.0,
                                      adv_weight=0.1, disc_start=50_000),
        ldm=LDMConfig(model_channels=192, channel_mult=(1, 2, 4), num_res_blocks=2,
                      context_dim=512, heads=8, dim_head=64, latent_frames=128, ref_frames=512,
                      steps=200_000, batch_size=64, lr=1e-4),
        guidediff=GuideDiffConfig(dim=512, hidden=1536, layers=8, clip_seconds=2.0,
                                  steps=500_000, batch_size=32, lr=2e-4),
        cyclegan=CycleGANConfig(channels=64, res_blocks=9, disc_channels=(64, 128, 256),
                                clip_seconds=4.0, steps=200_000, batch_size=1),
        unit=UNITConfig(channels=64, res_blocks=4, disc_channels=(64, 128, 256),
                        clip_seconds=4.0, steps=200_000, batch_size=1),
        musicvae=MusicVAEConfig(hidden=512, latent_channels=32, steps=100_000, batch_size=64,
                                lr=5e-4))


PRESETS = {
    "tiny": Config,          # trains on 2 CPU cores
    "paper": paper_config,   # a GPU-sized model
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()


def config_to_dict(cfg: Config) -> dict:
    return asdict(cfg)


def config_from_dict(d: dict) -> Config:
    """Inverse of config_to_dict; unknown keys are an error so a stale checkpoint is caught."""
    parts = {}
    for f in fields(Config):
        cls = f.default_factory
        sub = d.get(f.name, {})
        unknown = set(sub) - {g.name for g in fields(cls)}
        if unknown:
            raise ValueError(f"config section {f.name!r} has unknown keys {sorted(unknown)}")
        parts[f.name] = cls(**sub)
    return Config(**parts)


def save_checkpoint(path, **contents):
    """Write a plain dict with torch.save to a temporary file, then rename (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(contents, format=CHECKPOINT_FORMAT), tmp)
    os.replace(tmp, path)


def load_checkpoint(path, stage):
    """Load a checkpoint safely (weights_only: no code runs); errors say how to make one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {stage} checkpoint at {path}; train one with "
                                f"`python train.py --stage {stage}`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                         f"retrain it with `python train.py --stage {stage}`") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has an unknown checkpoint format; retrain it with "
                         f"`python train.py --stage {stage}`")
    return ckpt


def load_weights(module, ckpt, stage, grow=False):
    """Copy a checkpoint's weights into a freshly built module; a mismatch is a user error.
    grow: the module may have parts the checkpoint lacks (a part added to a trained model to
    fine-tune it, such as GuideDiff's MLP head); they keep their initial values. Returns
    the module; with grow, also the names it did not find."""
    try:
        missing, unexpected = module.load_state_dict(ckpt["model"], strict=not grow)
        if unexpected:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(f"the {stage} checkpoint does not fit this code (it was made by another "
                         f"version or config); retrain it with `python train.py --stage "
                         f"{stage}`") from None
    if grow:
        return module.eval(), missing
    return module.eval()
