// The Python extension module deeplabv2_ext._C. Importing it loads the operator library, whose
// static initialisers register torch.ops.deeplabv2_ext.*; it also exposes build information.
#include <torch/extension.h>

#include "aspp/aspp_limits.h"
#include "aspp/cpu/aspp_kernel.h"
#include "deeplabv2_ext.h"
#include "densecrf/cpu/lattice_loops.h"
#include "densecrf/cpu/permutohedral_kernel.h"
#include "densecrf/permutohedral.h"
#include "densecrf/permutohedral_math.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "deeplabv2_ext native operators (fused ASPP, DenseCRF)";
  // The most rates one call of the CUDA ASPP op takes (deeplabv2_ext.aspp splits more).
  m.attr("ASPP_MAX_RATES") = deeplabv2_ext::aspp::kAsppMaxRates;
  // The limits and the lattice layout of the DenseCRF ops (deeplabv2_ext.densecrf reads them).
  namespace densecrf = deeplabv2_ext::densecrf;
  m.attr("MAX_LATTICE_DIM") = densecrf::kMaxLatticeDim;
  m.attr("MEAN_FIELD_MAX_LABELS") = densecrf::kMeanFieldMaxLabels;
  pybind11::tuple lattice_tensors(static_cast<size_t>(densecrf::kLatticeTensors));
  for (int i = 0; i < densecrf::kLatticeTensors; ++i) {
    lattice_tensors[i] = pybind11::str(densecrf::kLatticeTensorNames[i]);
  }
  // The tensors of one lattice, in the order the ops take and return them.
  m.attr("LATTICE_TENSORS") = lattice_tensors;
  m.def("cuda_kernels_available", &deeplabv2_ext::cuda_kernels_available,
        "Whether this build of deeplabv2_ext contains its CUDA kernels.");

  // The code paths the CPU kernels choose (for bug reports, and for the tests of the switches).
  m.def("cpu_isa",
        [] { return std::string(deeplabv2_ext::densecrf::cpu::using_avx2() ? "avx2+fma"
                                                                              : "baseline"); },
        "The build of the CPU lattice loops in use: \"avx2+fma\" or \"baseline\".");
  m.def("cpu_lattice_neighbour_searches", &deeplabv2_ext::densecrf::cpu_neighbour_searches,
        "Per image, the blur-neighbour search of the CPU lattice: \"merge\" or \"hash\".");
  m.def("cpu_filter_ones",
        [](const std::vector<at::Tensor>& lattice) {
          return deeplabv2_ext::densecrf::cpu_filter_ones(lattice);
        },
        "K(1), the filter of ones of the CPU mean-field op's normalisers, for one lattice.");
  m.def("cpu_aspp_row_blocks", &deeplabv2_ext::aspp::cpu_row_blocks,
        "The (dy, row_begin, row_end) row blocks the CPU ASPP kernels visit per image.");
}
