// The Python extension module deeplabv2_ext._C. Importing it loads the operator library, whose
// static initialisers register torch.ops.deeplabv2_ext.*; it also exposes build information.
#include <torch/extension.h>

#include "aspp/aspp_limits.h"
#include "deeplabv2_ext.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "deeplabv2_ext native operators (fused ASPP, DenseCRF)";
  // The most rates one call of the CUDA ASPP op takes (deeplabv2_ext.aspp splits more).
  m.attr("ASPP_MAX_RATES") = deeplabv2_ext::aspp::kAsppMaxRates;
  m.def("cuda_kernels_available", &deeplabv2_ext::cuda_kernels_available,
        "Whether this build of deeplabv2_ext contains its CUDA kernels.");
}
