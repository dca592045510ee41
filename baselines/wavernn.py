"""WaveRNN (Kalchbrenner et al. 2018), the recurrent autoregressive baseline vocoder.

A single GRU runs over the samples (Sec. 3: one recurrent layer of a few hundred units in
place of WaveNet's deep stack); its input at sample t is the previous sample's class and
the log-mel features of t's frame, and two dense layers turn its state into the logits of
sample t. The output is one 8-bit mu-law softmax of 256 classes, as in WaveNet, not the
paper's 16-bit coarse/fine split (two 8-bit softmaxes): the training data and the metrics
here do not need 16 bits, and one softmax keeps sampling to one draw per sample.
Training is teacher-forced on short windows through nn.GRU; sampling steps a GRUCell that
shares the GRU's weights, one sample at a time for a whole batch of clips.

    spec (B, 1, n_mels, T) -conditioner-> c (B, T, D)
    [embed(previous class) (B, N, E), c at each sample's frame (B, N, D)] -GRU-> h (B, N, H)
        -relu(O1 h), O2-> logits (B, 256, N)
The mu-law classes, conditioner, training and scoring are WaveNet's (wavenet.py).
"""
import torch
import torch.nn as nn

import config
from baselines.wavenet import (MU, FrameConditioner, frame_index, sample_loop, train_vocoder,
                               vocoder_systems)

KIND = "vocoder"


class WaveRNN(nn.Module):
    def __init__(self, n_mels, hop, hidden=256, embed_dim=64, cond_dim=64, fc_dim=256):
        super().__init__()
        self.hop, self.n_mels = hop, n_mels
        self.conditioner = FrameConditioner(n_mels, cond_dim)
        self.embed = nn.Embedding(MU + 1, embed_dim)
        self.gru = nn.GRU(embed_dim + cond_dim, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden, fc_dim), nn.ReLU(),     # O1, O2
                                  nn.Linear(fc_dim, MU + 1))

    def forward(self, prev, spec, start=0):
        """Teacher forcing: prev (B, N) are the classes of samples start - 1 .. start + N - 2;
        returns logits (B, 256, N) for samples start .. start + N - 1 (zero initial state)."""
        cond = self.conditioner(spec)                                       # (B, T, D)
        frames = frame_index(start, prev.shape[1], self.hop, cond.shape[1])
        h, _ = self.gru(torch.cat([self.embed(prev), cond[:, frames]], dim=-1))  # (B, N, H)
        return self.head(h).transpose(1, 2)                                 # (B, 256, N)

    def cell(self):
        """A GRUCell holding the GRU's own parameters: the same recurrence, one step a call."""
        cell = nn.GRUCell(self.gru.input_size, self.gru.hidden_size)
        cell.weight_ih, cell.weight_hh = self.gru.weight_ih_l0, self.gru.weight_hh_l0
        cell.bias_ih, cell.bias_hh = self.gru.bias_ih_l0, self.gru.bias_hh_l0
        return cell

    @torch.no_grad()
    def generate(self, spec, length, generator=None, keep_logits=False, progress=None):
        """Ancestral sampling of `length` samples under spec (B, 1, n_mels, T): classes
        (B, length), and the logits of every step (B, 256, length) if keep_logits."""
        B = spec.shape[0]
        cond = self.conditioner(spec).transpose(0, 1).contiguous()         # (T, B, D)
        frames = frame_index(0, length, self.hop, cond.shape[0]).tolist()
        cell = self.cell()
        h = [spec.new_zeros(B, self.gru.hidden_size)]                     # the GRU's state

        def step(t, prev):
            h[0] = cell(torch.cat([self.embed(prev), cond[frames[t]]], dim=-1), h[0])  # (B, H)
            return self.head(h[0])                                          # (B, 256)
        return sample_loop(step, B, length, spec.device, generator, keep_logits, progress)


def build(cfg):
    c = cfg.wavernn
    return WaveRNN(cfg.audio.n_mels, cfg.audio.hop, c.hidden, c.embed_dim, c.cond_dim,
                   c.fc_dim)


def from_checkpoint(ckpt):
    """The WaveRNN of a loaded baselines/wavernn.pt (config.load_checkpoint), in fp32."""
    model = build(config.config_from_dict(ckpt["config"]))
    return config.load_weights(model, ckpt, "baselines").float()


def train(args, cfg, kit):
    train_vocoder("wavernn", build, cfg.wavernn, args, cfg, kit)


def systems(ckpt_dir, cfg, logmel, styles, waves):
    return vocoder_systems("WaveRNN", "wavernn", from_checkpoint, ckpt_dir, cfg, logmel, waves)
