"""CI check of an installed deeplabv2_ext (run by .ci/run on the sdist's install): it is the
installed copy (with the deeplabv2 application), and one ASPP call and one CRF call give right
answers.

Run it from outside the repository (so that the installed package is imported). Exit status 1
on failure (an assertion).
"""
from __future__ import annotations

import sysconfig

import torch
import torch.nn.functional as F

import deeplabv2_ext
from deeplabv2.models import ConvASPP

assert deeplabv2_ext.__file__.startswith(sysconfig.get_paths()["purelib"]), deeplabv2_ext.__file__
print(f"deeplabv2_ext {deeplabv2_ext.__version__} from {deeplabv2_ext.__file__}")

# ASPP: the fused op against the reference head (deeplabv2.models.ConvASPP: R nn.Conv2d, summed
# by deeplabv2_ext.aspp.aspp_reference) in float64, with standard-normal weights and biases copied
# into the fused module.
torch.manual_seed(0)
reference = ConvASPP(8, 6, rates=(1, 3)).double()
for conv in reference.convs:
    torch.nn.init.normal_(conv.weight)
    torch.nn.init.normal_(conv.bias)
fused = deeplabv2_ext.ASPP.from_convs(reference.convs).float()
x = torch.randn(2, 8, 17, 19)
with torch.no_grad():
    out = fused(x)
    ref = reference(x.double())
error = (out.double() - ref).abs().max().item()
assert out.shape == ref.shape and error < 1e-3, (out.shape, error)
print(f"aspp {tuple(out.shape)}: max |error| vs float64 ConvASPP = {error:.1e}")

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
