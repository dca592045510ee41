"""The trained models a transfer needs: the checkpoints loaded, checked against each other
and against this code, and optionally compiled (transfer.py, evaluate.py).

    checkpoints/{ldm,autoencoder,guidediff}.pt [+ distill.pt] -> Models (eval mode, no gradients)
"""
import ctypes
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import autoencoder as ae_lib
import config
import distill
import guidediff
import metrics
import unet
from stft import LogMel

CKPT_DIR = Path(__file__).resolve().parent / "checkpoints"


@dataclass
class Models:
    """Everything a transfer needs, loaded once by load_models."""
    cfg: config.Config
    styles: list
    logmel: LogMel
    autoencoder: ae_lib.Autoencoder
    ldm: unet.LatentDiffusion
    latent_scale: float
    vocoder: object = None          # a GuideDiff; None means Griffin-Lim
    noise_levels: list = None       # GuideDiff's few-step schedule
    note: str = ""                  # which vocoder, and why
    bf16: bool = True               # bfloat16 autocast for the U-Net and GuideDiff
    student: object = None          # the ldm's few-step student U-Net (distill.py), or None
    student_steps: int = None       # ... the steps it was distilled for

    @property
    def device(self):
        return self.logmel.mel_fb.device


def load_stage(ckpt_dir, stage, build):
    """(model, checkpoint) for a stage; any checkpoint that does not fit is a ValueError."""
    path = Path(ckpt_dir) / f"{stage}.pt"
    ckpt = config.load_checkpoint(path, stage)
    try:
        return build(ckpt), ckpt
    except (KeyError, TypeError, ValueError) as e:
        if "train.py" in str(e):
            raise
        raise ValueError(f"{path} does not fit this code ({type(e).__name__}: {e}); retrain it "
                         f"with `python train.py --stage {stage}`") from None


def keep_freed_memory(threshold=1 << 30):
    """Have glibc's allocator keep freed memory for reuse (allocations below `threshold`
    bytes from its heap, not fresh pages of their own; its top not given back below
    2 threshold). By default every large tensor a network frees goes back to the kernel and
    the next one is mapped anew, and each of its pages faults and is zeroed: a 3-minute
    song spent 1.4 s of its 9 in the kernel so (0.5 s now). The process's setting; a no-op
    where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, ctypes.c_int(threshold))        # M_MMAP_THRESHOLD
        libc.mallopt(-1, ctypes.c_int(2 * threshold - 1))    # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def load_models(ckpt_dir=CKPT_DIR, vocoder=None, device="cpu", compile=False, bf16=True,
                teacher=False):
    """Load and check the autoencoder, the ldm and the vocoder. vocoder None: GuideDiff if a
    finished guidediff.pt exists, else Griffin-Lim; Models.note says which and why.
    The ldm's few-step student (distill.pt) is loaded when there is one, unless teacher.
    compile: torch.compile the networks (see compile_models); bf16: bfloat16 autocast for
    the U-Net and GuideDiff (fp32 for the autoencoder, whose log-mel feeds everything)
    where this machine runs bf16 faster than fp32 (metrics.bf16_pays), fp32 elsewhere."""
    keep_freed_memory()
    ldm, ldm_ckpt = load_stage(ckpt_dir, "ldm", unet.from_checkpoint)
    autoencoder, ae_ckpt = load_stage(ckpt_dir, "autoencoder", ae_lib.from_checkpoint)
    cfg = config.config_from_dict(ldm_ckpt["config"])
    if (ae_ckpt.get("latent_scale") != ldm_ckpt.get("latent_scale")
            or config.config_from_dict(ae_ckpt["config"]).audio != cfg.audio):
        raise ValueError("the ldm checkpoint was trained on another autoencoder; retrain it "
                         "with `python train.py --stage ldm`")
    models = Models(cfg, list(ldm_ckpt["styles"]), LogMel(**asdict(cfg.audio)), autoencoder,
                    ldm, float(ldm_ckpt["latent_scale"]),
                    bf16=bf16 and metrics.bf16_pays(device))
    gd_path = Path(ckpt_dir) / "guidediff.pt"
    models.note = f"vocoder: Griffin-Lim (no {gd_path}: `python train.py --stage guidediff`)"
    if vocoder == "guidediff" or vocoder is None and gd_path.is_file():
        gd, gd_ckpt = load_stage(ckpt_dir, "guidediff", guidediff.from_checkpoint)
        gd_cfg = config.config_from_dict(gd_ckpt["config"])
        if gd_cfg.audio != cfg.audio:
            raise ValueError("the guidediff checkpoint was made for another log-mel front end; "
                             "retrain it with `python train.py --stage guidediff`")
        # The schedule search runs when training ends: a checkpoint saved during training
        # has none, so it is only used on request, with the schedule training validates with.
        models.note = (f"vocoder: Griffin-Lim ({gd_path} is from an unfinished run; "
                       f"--vocoder guidediff uses it anyway)")
        if gd.searched or vocoder == "guidediff":
            models.vocoder, models.note = gd, f"vocoder: GuideDiff ({gd_path})"
            models.noise_levels = gd.schedules[gd.default_steps]
    student_path = Path(ckpt_dir) / "distill.pt"
    if not teacher and student_path.is_file():
        models.student, models.student_steps, _ = distill.load_student(
            student_path, Path(ckpt_dir) / "ldm.pt")
        models.note += f"; U-Net: the {models.student_steps}-step student ({student_path})"
    for module in (models.logmel, autoencoder, ldm, models.vocoder, models.student):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    autoencoder.to(memory_format=torch.channels_last)      # as its inputs (ae_lib.channels_last)
    if compile:
        compile_models(models)
    return models


def compile_models(models):
    """torch.compile (inductor: C++/OpenMP kernels on a CPU, Triton on CUDA) of the U-Net,
    the autoencoder's encoder and decoder and GuideDiff's guide encoder and denoiser, which
    fuses GroupNorm + SiLU, the FiLM arithmetic and the attention's surroundings. Windows
    all have WINDOW frames but batches differ (inversion, guided steps, the last chunk), so
    the U-Net compiles twice: for the first shape, then once with a dynamic batch (torch's
    automatic dynamic shapes; dynamic=True fails to lower the strided convolutions here).
    The autoencoder and GuideDiff see each song's length and are compiled dynamic. The
    first call pays for compilation (RESULTS.md, speed table: about a minute)."""
    models.ldm.unet = torch.compile(models.ldm.unet)
    if models.student is not None:
        models.student = torch.compile(models.student)
    ae = models.autoencoder
    ae.encoder, ae.decoder = (torch.compile(m, dynamic=True) for m in (ae.encoder, ae.decoder))
    if models.vocoder is not None:
        gd = models.vocoder
        gd.guide, gd.denoise = torch.compile(gd.guide, dynamic=True), \
            torch.compile(gd.denoise, dynamic=True)


