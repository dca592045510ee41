"""Tests for distill.py: adapters fold into their layers, the two-step target lands where
two teacher steps land, classifier-free guidance in a closed form, and a student that
learns the target (which an untrained one misses)."""
import copy

import pytest
import torch

import config
import diffusion
import distill
import unet


def _tiny_ldm(paired=True, seed=0):
    torch.manual_seed(seed)
    c = config.LDMConfig(model_channels=16, channel_mult=(1, 2), attention=(False, True),
                         context_dim=16, tokens=2, heads=2, dim_head=8, paired=paired)
    ldm = unet.build_ldm(c, n_styles=3, n_mels=32)
    for p in ldm.unet.parameters():         # a teacher that is not the identity at zero
        p.data.add_(0.05 * torch.randn_like(p))
    return ldm


@pytest.mark.parametrize("layer", [torch.nn.Conv2d(5, 7, 3, stride=2, padding=1),
                                   torch.nn.Conv2d(5, 7, 1), torch.nn.Linear(5, 7)])
def test_lora_folds_into_one_layer(layer):
    lora = distill.LoRA(layer, rank=3)
    x = torch.randn(2, 5, 9, 11) if isinstance(layer, torch.nn.Conv2d) else torch.randn(4, 5)
    assert torch.equal(lora(x), layer(x))                 # up starts at zero
    torch.nn.init.normal_(lora.adapter[1].weight)
    merged = lora.merged()
    assert type(merged) is type(layer)
    assert not torch.allclose(lora(x), layer(x), atol=1e-3)
    torch.testing.assert_close(merged(x), lora(x), atol=1e-5, rtol=1e-5)


def test_adapters_wrap_every_layer_and_merge_back():
    model = _tiny_ldm().unet
    adapters = distill.add_adapters(copy.deepcopy(model), rank=2)
    n_layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert len(adapters) == n_layers
    wrapped = copy.deepcopy(model)
    adapters = distill.add_adapters(wrapped, rank=2)
    for p in adapters.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, t, ctx = torch.randn(2, 8, 8, 16), torch.tensor([10, 900]), torch.randn(2, 2, 16)
    before = wrapped(x, t, ctx)
    merged = distill.merge_adapters(wrapped)
    assert not any(isinstance(m, distill.LoRA) for m in merged.modules())
    torch.testing.assert_close(merged(x, t, ctx), before, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(before, model(x, t, ctx), atol=1e-3)


def test_two_step_target_lands_where_two_teacher_steps_land():
    """One DDIM step with the target from t, in closed form, equals two DDIM steps of any
    teacher, at every step of the student's grid: pure noise at t = T - 1 included (zero
    terminal SNR) and x0 at the end."""
    sched = diffusion.make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g) * 0.3

    def teacher(x, t):                           # any function of x and t
        return torch.einsum("ij,bjft->bift", A, x) * (1 + t.view(-1, 1, 1, 1) / 1000) + 0.1

    for steps in (1, 2, 4):
        k = torch.arange(steps)
        t, t_mid, t_next = distill.student_timesteps(sched, steps, k)
        assert t[0] == 999 and t_next[-1] == -1
        assert t.tolist() == diffusion.ddim_timesteps(1000, steps).tolist()
        x_t = torch.randn(steps, 4, 3, 5, generator=g)
        x_mid = diffusion.ddim_jump(sched, x_t, t, t_mid, teacher(x_t, t))
        two = diffusion.ddim_jump(sched, x_mid, t_mid, t_next, teacher(x_mid, t_mid))
        v = distill.two_step_target(teacher, sched, x_t, t, t_mid, t_next)
        one = diffusion.ddim_jump(sched, x_t, t, t_next, v)
        torch.testing.assert_close(one, two, atol=1e-4, rtol=1e-4)
        # and ddim_jump is ddim_step's arithmetic, one timestep at a time
        for i in range(steps):
            ref = diffusion.ddim_step(sched, x_t[i:i + 1], int(t[i]), int(t_next[i]), v[i:i + 1])
            torch.testing.assert_close(one[i:i + 1], ref, atol=1e-5, rtol=1e-5)


class GaussianDenoiser(torch.nn.Module):
    """The exact v-prediction for data x0 ~ N(mu(context), I): E[x0 | x_t] in closed form,
    mu the context's mean token. A stand-in for a U-Net (guidance_embed = None)."""
    guidance_embed = None

    def __init__(self, sched):
        super().__init__()
        self.sched = sched

    def forward(self, x, t, context):
        a, s = diffusion.alpha_sigma(self.sched, t, x)
        mu = context.mean((1, 2)).view(-1, 1, 1, 1)
        x0 = mu + a / (a ** 2 + s ** 2) * (x - a * mu)          # posterior mean, var 1 prior
        return (a * x - x0) / s                                  # its v


def test_guided_teacher_is_classifier_free_guidance_in_closed_form():
    sched = diffusion.make_schedule("cosine", 1000)
    model = GaussianDenoiser(sched)
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([999, 500, 20])
    context, null = torch.full((3, 2, 8), 2.0), torch.zeros(3, 2, 8)
    cond = model(x, t, context)
    one = distill.guided(model, context, null, torch.ones(3))(x, t)
    torch.testing.assert_close(one, cond, atol=1e-5, rtol=1e-5)             # w = 1: conditional
    w = torch.tensor([0.0, 2.0, 4.5])
    got = distill.guided(model, context, null, w)(x, t)
    a, s = diffusion.alpha_sigma(sched, t, x)
    x0_c, x0_u = 2.0 + a / (a ** 2 + s ** 2) * (x - a * 2.0), a / (a ** 2 + s ** 2) * x
    x0_w = x0_u + w.view(-1, 1, 1, 1) * (x0_c - x0_u)                # guidance is linear in x0
    torch.testing.assert_close(got, (a * x - x0_w) / s, atol=1e-4, rtol=1e-4)


def test_student_starts_as_the_teachers_conditional_model(tmp_path):
    ldm = _tiny_ldm()
    path = tmp_path / "ldm.pt"
    config.save_checkpoint(path, model=ldm.state_dict(), styles=["a", "b", "c"],
                           config=config.config_to_dict(config.Config(
                               audio=config.AudioConfig(n_mels=32), ldm=ldm.c)))
    student = distill.student_unet(config.load_checkpoint(path, "ldm"))
    x, t, ctx = torch.randn(2, 8, 8, 16), torch.tensor([999, 300]), torch.randn(2, 2, 16)
    torch.testing.assert_close(student(x, t, ctx, guidance=torch.tensor([1.0, 4.0])),
                               ldm.unet(x, t, ctx))


def test_a_student_learns_one_step_for_two_on_a_fixed_batch():
    """After training on one batch (fixed noise, t, w), the student's one DDIM step lands
    near the teacher's two; the untrained student (the teacher's conditional model, one
    step) misses by far more."""
    ldm = _tiny_ldm()
    c = config.DistillConfig(student_steps=2, rank=4)
    student = copy.deepcopy(ldm)
    student.unet = unet.build_ldm(ldm.c, 3, 32, guidance_input=True).unet
    student.unet.load_state_dict(ldm.unet.state_dict(), strict=False)
    model = distill.Distiller(ldm, ldm.unet, student.unet, c)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(4, 4, 8, 16, generator=g), torch.tensor([0, 1, 2, 0]),
             torch.randn(4, 1, 32, 32, generator=g), torch.randn(4, 4, 8, 16, generator=g))

    def error():
        torch.manual_seed(0)
        with torch.no_grad():
            return model(*batch).item()
    before = error()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        torch.manual_seed(0)                  # the same t, w and noise every step
        loss = model(*batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = error()
    assert after < 0.1 * before, (before, after)
