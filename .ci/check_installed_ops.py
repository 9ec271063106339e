"""CI check of an installed deeplabv2_ext (run by .ci/run on the sdist's install): it is the
installed copy, and one ASPP call and one CRF call give right answers.

Run it from outside the repository (so that the installed package is imported). Exit status 1
on failure (an assertion).
"""
from __future__ import annotations

import sysconfig

import torch
import torch.nn.functional as F

import deeplabv2_ext

assert deeplabv2_ext.__file__.startswith(sysconfig.get_paths()["purelib"]), deeplabv2_ext.__file__
print(f"deeplabv2_ext {deeplabv2_ext.__version__} from {deeplabv2_ext.__file__}")

# ASPP: the fused op against the sum of F.conv2d in float64.
torch.manual_seed(0)
rates = [1, 3]
x = torch.randn(2, 8, 17, 19)
weight = torch.randn(len(rates), 6, 8, 3, 3)
bias = torch.randn(len(rates), 6)
out = deeplabv2_ext.aspp(x, weight, bias, rates)
ref = sum(F.conv2d(x.double(), weight[r].double(), bias[r].double(), padding=rate, dilation=rate)
          for r, rate in enumerate(rates))
error = (out.double() - ref).abs().max().item()
assert out.shape == ref.shape and error < 1e-3, (out.shape, error)
print(f"aspp {tuple(out.shape)}: max |error| vs float64 F.conv2d = {error:.1e}")

# CRF: two flat colour regions, labels flipped at random on 30 % of the pixels in the unary;
# mean field must return distributions and repair most of the flipped pixels.
H, W, L = 32, 40, 2
truth = torch.zeros(H, W, dtype=torch.long)
truth[:, W // 2:] = 1
image = torch.where(truth.bool(), 200, 40).to(torch.uint8).expand(3, H, W)[None].contiguous()
noisy = torch.where(torch.rand(H, W) < 0.3, 1 - truth, truth)
unary = torch.log(F.one_hot(noisy, L).permute(2, 0, 1).float() * 0.5 + 0.25)[None]
q = deeplabv2_ext.dense_crf(unary, image, iterations=5)
assert q.shape == (1, L, H, W) and torch.allclose(q.sum(1), torch.ones(1, H, W), atol=1e-5)
wrong_before = (noisy != truth).float().mean().item()
wrong_after = (q[0].argmax(0) != truth).float().mean().item()
assert wrong_after < 0.1 * wrong_before, (wrong_before, wrong_after)
print(f"dense_crf {tuple(q.shape)}: wrong labels {100 * wrong_before:.1f} % -> {100 * wrong_after:.1f} %")
