// CUDA-on-CPU replacement for the toolkit header (see cuda_on_cpu/runtime.h).
#pragma once
#include "cuda_on_cpu/runtime.h"
