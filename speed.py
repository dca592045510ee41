"""What a transfer costs: U-Net calls per window, FLOPs, and real-time factors per stage
(the eval's cost columns and its speed table; evaluate.py scores the quality).

    settings -> U-Net calls per window;  transfer() on a clip -> GFLOP and seconds per stage
"""
import time

import numpy as np
import torch
from tqdm import tqdm

import diffusion
import metrics
import transfer as transfer_lib

SPEED_SECONDS = 10.0        # the clip the speed table times (a test piece's first 10 s)
SPEED_REPEATS = 3


def speed_table(ckpt_dir, device, split):
    """Real-time factor of transfer.transfer, per stage and end to end, on SPEED_SECONDS of
    a test piece at the default settings: eager vs torch.compile, fp32 vs bf16 autocast,
    each the median of SPEED_REPEATS runs after a first (warm-up, compiling) run. The FLOPs
    of each stage are counted once; achieved FLOP/s is set against this machine's matmul
    throughput, measured in the same run."""
    source, target = split.styles[0], split.styles[-1]
    models = transfer_lib.load_models(ckpt_dir, device=device, bf16=False)
    sr = models.cfg.audio.sample_rate
    wave = split.waves[split.pieces[0], source][:int(SPEED_SECONDS * sr)].numpy()

    def run(models, stopwatch=transfer_lib.no_stopwatch):
        transfer_lib.transfer(wave, sr, target, models=models, progress=False,
                              stopwatch=stopwatch)

    with metrics.flop_counter() as counter:
        watch = transfer_lib.Stopwatch(device, counter)
        run(models, watch)
    flops = dict(watch.flops, **{"end to end": counter.get_total_flops()})
    ceiling = {"fp32": metrics.matmul_gflops(device=device),
               "bf16": metrics.matmul_gflops(dtype=torch.bfloat16, device=device)}
    rows = {}
    for compiled in (False, True):             # bf16 only where it runs faster (AMX, ...)
        for precision in ("fp32", "bf16") if metrics.bf16_pays(device) else ("fp32",):
            name = f"{'compiled' if compiled else 'eager'}, {precision}"
            models = transfer_lib.load_models(ckpt_dir, device=device, compile=compiled,
                                              bf16=precision == "bf16")
            t0 = time.perf_counter()
            run(models)
            first = time.perf_counter() - t0
            times = []
            for _ in tqdm(range(SPEED_REPEATS), desc=f"speed: {name}", leave=False):
                watch = transfer_lib.Stopwatch(device)
                t0 = time.perf_counter()
                run(models, watch)
                times.append(dict(watch.seconds, **{"end to end": time.perf_counter() - t0}))
            rtf = {k: float(np.median([t[k] for t in times])) / SPEED_SECONDS for k in times[0]}
            rows[name] = dict(rtf=rtf, first_call=first, gflops=flops["end to end"] / 1e9 / (
                rtf["end to end"] * SPEED_SECONDS), ceiling=ceiling[precision])
    return dict(seconds=SPEED_SECONDS, source=source, target=target,
                flops={k: v / 1e9 for k, v in flops.items()}, rows=rows, ceiling=ceiling)


def unet_calls(models, warm_start=transfer_lib.WARM_START, **settings):
    """U-Net evaluations per window of a transfer (classifier-free guidance's batched
    halves count two): the inversion's, a first step refined `refine` times and
    warm-started steps after it (diffusion.ddim_invert), then the sampler's."""
    s = transfer_lib.defaults(models, **settings)
    T = models.ldm.sched.T
    steps = len(diffusion.ddim_timesteps(T, s["steps"], int(round(s["strength"] * (T - 1)))))
    guided = 2 if models.student is None and s["guidance"] != 1.0 else 1
    r = s["refine"]                          # the first step: a guess + r refinements
    inversion = (0 if s["mode"] != "inversion" else r + 1 + (steps - 1) * max(1, r)
                 if warm_start != "off" else steps * (r + 1))
    return inversion + guided * steps


def transfer_cost(system, models, settings, wave, sr, target):
    """U-Net calls per window, and GFLOP per second of audio of the whole transfer
    (matmuls and convolutions, metrics.flop_counter), measured on one wave."""
    with metrics.flop_counter() as counter:
        system(wave, None, target, None)
    return dict(unet_calls=unet_calls(models, **settings),
                gflop_per_s=counter.get_total_flops() / 1e9 / (len(wave) / sr))
