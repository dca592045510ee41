"""Few-step transfer: guidance and step distillation of the latent U-Net.

The teacher's guided transfer costs two U-Net calls a step (classifier-free guidance's
conditional and unconditional halves) for ten steps. Its student makes it one call a step
for a few steps:
- guidance distillation (Meng et al. 2023, "On Distillation of Guided Diffusion Models"):
  the student takes the guidance weight w as an input (unet.UNet(guidance_input=True)) and
  predicts the guided uncond + w (cond - uncond) in one call;
- step distillation (Salimans & Ho 2022, "Progressive Distillation", Alg. 2): one student
  DDIM step from t lands where two teacher DDIM steps land (t -> t_mid -> t_next), so a
  round halves the steps; the next round's teacher is this round's student (--init).
The first round does both at once: its teacher is the guided LDM itself.

The student is the teacher's U-Net with low-rank adapters (LoRA, Hu et al. 2022) on every
convolution and linear layer, as LCM-LoRA (Luo et al. 2023) distils Stable Diffusion: its
checkpoint, distill.pt, holds the adapters and the guidance input alone (a few MB beside
ldm.pt), and they are folded into the weights when it is loaded, so a student call costs
what a teacher call costs.

    x_t at t -> teacher twice (guided by w) -> x_next -> target v~;  student(x_t, t, c, w) ~ v~
"""
import copy
import dataclasses
import hashlib
from pathlib import Path

import torch
import torch.nn as nn

import config
import diffusion
import unet


# ---------------------------------------------------------------- low-rank adapters
class LoRA(nn.Module):
    """base(x) + up(down(x)) around a frozen Conv2d or Linear (Hu et al. 2022, eq. 3): down
    has the base's kernel, stride and padding with `rank` outputs; up is 1x1 and starts at
    zero, so the layer starts as its base."""

    def __init__(self, base, rank):
        super().__init__()
        self.base = base.requires_grad_(False)
        if isinstance(base, nn.Conv2d):
            assert base.groups == 1 and base.dilation == (1, 1), base
            down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride,
                             base.padding, bias=False)
            up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            down = nn.Linear(base.in_features, rank, bias=False)
            up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(up.weight)
        self.adapter = nn.Sequential(down, up)

    def forward(self, x):
        return self.base(x) + self.adapter(x)

    def merged(self):
        """The base layer with the adapter folded in, W + up down: one layer again."""
        down, up = self.adapter
        layer = copy.deepcopy(self.base)
        delta = torch.einsum("or,ri...->oi...", up.weight.flatten(1).double(),
                             down.weight.double())               # (out, in[, kh, kw])
        with torch.no_grad():
            layer.weight.copy_(layer.weight.double() + delta)
        return layer


def _replace(model, name, module):
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def add_adapters(model, rank, skip=("guidance_embed",)):
    """Wrap every Conv2d and Linear of model (but those under `skip`) in a LoRA, in place;
    -> nn.ModuleDict of the adapters, the trainable part."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
             and not n.startswith(skip)]
    for name in names:
        _replace(model, name, LoRA(model.get_submodule(name), rank))
    return nn.ModuleDict({n.replace(".", "-"): model.get_submodule(n).adapter for n in names})


def merge_adapters(model):
    """Fold every LoRA of model into its base layer, in place; -> model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRA):
            _replace(model, name, module.merged())
    return model


# ---------------------------------------------------------------- the target
def guided(unet_model, context, null_context, w, cond=None):
    """The teacher's prediction model(x, t) for a batch: classifier-free guidance's
    uncond + w (cond - uncond) from one batched call of a plain U-Net, or one call of a
    guidance-input U-Net (a student, w its input). w (B,); cond: extra input channels."""
    def model(x, t):
        if cond is not None:
            x = torch.cat([x, cond.to(x)], 1)
        if unet_model.guidance_embed is not None:
            return unet_model(x, t, context, guidance=w).float()
        pred = unet_model(torch.cat([x, x]), torch.cat([t, t]),
                          torch.cat([context, null_context])).float()
        conditional, unconditional = pred.chunk(2)
        return unconditional + w.view(-1, 1, 1, 1) * (conditional - unconditional)
    return model


def two_step_target(teacher, sched, x_t, t, t_mid, t_next, prediction="v"):
    """The prediction whose one DDIM step from x_t at t lands where two teacher DDIM steps
    land, t -> t_mid -> t_next (Salimans & Ho 2022, Alg. 2, with a v-prediction):
        x~ = (x_next - (s_next / s_t) x_t) / (a_next - (s_next / s_t) a_t),   v~ = (a_t x_t - x~) / s_t
    with a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar); t, t_mid, t_next (B,), -1 is x0."""
    x_mid = diffusion.ddim_jump(sched, x_t, t, t_mid, teacher(x_t, t), prediction)
    x_next = diffusion.ddim_jump(sched, x_mid, t_mid, t_next, teacher(x_mid, t_mid), prediction)
    a_t, s_t = diffusion.alpha_sigma(sched, t, x_t)
    a_next, s_next = diffusion.alpha_sigma(sched, t_next, x_t)
    x0 = (x_next - s_next / s_t * x_t) / (a_next - s_next / s_t * a_t)
    return (a_t * x_t - x0) / s_t if prediction == "v" else (x_t - a_t * x0) / s_t


def with_guidance(student, w):
    """A guidance-input U-Net (a student) as a model(x, t, context) at the weight w."""
    return lambda x, t, c: student(x, t, c, guidance=torch.full((len(x),), float(w),
                                                                  device=x.device))


def student_timesteps(sched, steps, k):
    """(t, t_mid, t_next) of the student's k-th step (k (B,) in 0..steps-1): its trailing
    grid is every other timestep of the teacher's at 2 steps (diffusion.ddim_timesteps)."""
    grid = torch.cat([diffusion.ddim_timesteps(sched.T, 2 * steps), torch.tensor([-1])])
    return grid[2 * k], grid[2 * k + 1], grid[2 * k + 2]


class Distiller(nn.Module):
    """One round of distillation, its forward the loss (one forward, as DDP wants): the
    frozen teacher U-Net (the LDM's, guided by CFG, or a previous student), the LDM's
    style encoder and schedule, and the student: the LDM's U-Net with a guidance input and
    adapters (self.adapters: what trains and what distill.pt stores)."""

    def __init__(self, ldm, teacher_unet, student_unet, c):
        super().__init__()
        self.style, self.sched, self.c, self.ldm_c = ldm.style, ldm.sched, c, ldm.c
        self.style.requires_grad_(False)
        self.teacher = teacher_unet.requires_grad_(False)
        self.student = student_unet.requires_grad_(False)
        self.adapters = add_adapters(self.student, c.rank)
        self.adapters["guidance"] = self.student.guidance_embed.requires_grad_(True)

    def forward(self, z0, labels, ref_spec, z_src=None):
        B, c, device = len(z0), self.c, z0.device
        with torch.no_grad():
            use_ref = (torch.rand(B, device=device) < self.ldm_c.ref_prob)[:, None, None]
            context = torch.where(use_ref, self.style.from_reference(ref_spec),
                                  self.style.from_labels(labels))
            w = torch.empty(B, device=device).uniform_(c.guidance_min, c.guidance_max)
            k = torch.randint(0, c.student_steps, (B,))
            t, t_mid, t_next = (s.to(device) for s in student_timesteps(self.sched,
                                                                        c.student_steps, k))
            x_t = diffusion.q_sample(self.sched, z0, t, torch.randn_like(z0))
            teacher = guided(self.teacher, context, self.style.null_context(B), w, z_src)
            target = two_step_target(teacher, self.sched, x_t, t, t_mid, t_next,
                                     self.ldm_c.prediction)
        x = x_t if z_src is None else torch.cat([x_t, z_src], 1)
        return (self.student(x, t, context, guidance=w).float() - target).pow(2).mean()


# ---------------------------------------------------------------- building and loading
def file_hash(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def student_unet(ldm_ckpt):
    """The LDM's U-Net with a guidance input (at zero, so it computes the teacher's
    conditional prediction), from a loaded ldm.pt."""
    return unet.from_checkpoint(ldm_ckpt, guidance_input=True).unet


def load_student(path, ldm_path):
    """(merged student U-Net, its steps, distill.pt's checkpoint) from a distill.pt and the
    ldm.pt it was distilled from; a student of another ldm.pt is a ValueError."""
    ckpt = config.load_checkpoint(path, "distill")
    if ckpt.get("teacher") != file_hash(ldm_path):
        raise ValueError(f"{path} was distilled from another {Path(ldm_path).name}; "
                         f"rerun `python train.py --stage distill`, or use the teacher "
                         f"(transfer.py --teacher)")
    ldm_ckpt = config.load_checkpoint(ldm_path, "ldm")
    model = student_unet(ldm_ckpt)
    c = config.config_from_dict(ckpt["config"]).distill
    adapters = add_adapters(model, c.rank)
    adapters["guidance"] = model.guidance_embed
    config.load_weights(adapters, ckpt, "distill")
    return merge_adapters(model).eval().requires_grad_(False), c.student_steps, ckpt


def train(args, cfg, kit):
    """`python train.py --stage distill`: one round, teacher -> student at
    cfg.distill.student_steps; --init a distill.pt makes that student the teacher (it must
    take twice the steps) and starts from its adapters."""
    c = cfg.distill
    if args.student_steps:
        c.student_steps = args.student_steps
    rank, world, device = kit.setup_distributed(args.device)
    ldm_path = Path(args.ckpt_dir) / "ldm.pt"
    ldm_ckpt = config.load_checkpoint(ldm_path, "ldm")
    ldm = unet.from_checkpoint(ldm_ckpt).to(device)
    # The LDM's training items, with fewer recorded versions: each is minutes of encoding.
    items = dataclasses.replace(ldm.c, versions=min(c.versions, ldm.c.versions))
    dataset, val_set, scale, _ = kit.latent_datasets(args, cfg, rank, device, items)
    teacher = ldm.unet
    if args.init:                           # the next round: the last student teaches
        teacher, teacher_steps, _ = load_student(args.init, ldm_path)
        if teacher_steps != 2 * c.student_steps:
            raise ValueError(f"{args.init} takes {teacher_steps} steps; a student of it "
                             f"takes half as many: --student-steps {teacher_steps // 2}")
    torch.manual_seed(args.seed)
    model = Distiller(ldm, teacher.to(device), student_unet(ldm_ckpt).to(device), c)
    n = sum(p.numel() for p in model.adapters.parameters())
    if rank == 0:
        print(f"distill: {c.student_steps} student steps from a teacher at "
              f"{2 * c.student_steps}; {n} trainable parameters")

    @torch.no_grad()
    def validate(ema):                        # fixed noise, crops and w: comparable over time
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            batch = torch.utils.data.default_collate([val_set[i]
                                                      for i in range(0, len(val_set), 6)])
            return {"val_loss": ema(*(b.to(device) for b in batch)).item()}

    kit.train_loop(model, lambda net, batch, step: net(*batch), dataset, c,
                   kit.options(args), "distill", validate, export=lambda m: m.adapters,
                   extra=lambda ema: dict(config=config.config_to_dict(cfg),
                                          styles=ldm_ckpt["styles"], latent_scale=scale,
                                          teacher=file_hash(ldm_path)))
