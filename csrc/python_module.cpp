// The Python extension module deeplabv2_ext._C. Importing it loads the operator library, whose
// static initialisers register torch.ops.deeplabv2_ext.*; it also exposes build information.
#include <torch/extension.h>

#include "deeplabv2_ext.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "deeplabv2_ext native operators (fused ASPP, DenseCRF)";
  m.def("cuda_kernels_available", &deeplabv2_ext::cuda_kernels_available,
        "Whether this build of deeplabv2_ext contains its CUDA kernels.");
}
