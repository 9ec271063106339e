// Runtime value -> compile-time constant, the one dispatch idiom of the launchers (the shape of
// flash-attention's static_switch.h). Each macro evaluates its runtime argument once, then calls
// the lambda given last, in which NAME is a `static constexpr` copy of the matching value, and
// returns what the lambda returns (every branch must return the same type):
//
//   DLV2_BOOL_SWITCH(grad_output_channel_fast, kChanFast, [&] { run<kChanFast>(...); });
//   DLV2_INT_SWITCH3(mode, kMode, kLoadPixelFast, kLoadChanFast, kLoadVec, [&] { ... });
//
// Every branch instantiates the lambda, so a body that must not exist for some constant guards it
// with `if constexpr`. A value that matches none of V0, V1 takes the last branch (V2): callers
// pass values from a closed set. Plain C++17: nvcc and the host compiler of the CUDA-on-CPU checks.
#pragma once

#define DLV2_BOOL_SWITCH(COND, NAME, ...)     \
  [&] {                                       \
    if (COND) {                               \
      static constexpr bool NAME = true;      \
      return __VA_ARGS__();                   \
    } else {                                  \
      static constexpr bool NAME = false;     \
      return __VA_ARGS__();                   \
    }                                         \
  }()

#define DLV2_INT_SWITCH3(VALUE, NAME, V0, V1, V2, ...) \
  [&] {                                                \
    const int dlv2_switch_value_ = (VALUE);            \
    if (dlv2_switch_value_ == (V0)) {                  \
      static constexpr int NAME = (V0);                \
      return __VA_ARGS__();                            \
    } else if (dlv2_switch_value_ == (V1)) {           \
      static constexpr int NAME = (V1);                \
      return __VA_ARGS__();                            \
    } else {                                           \
      static constexpr int NAME = (V2);                \
      return __VA_ARGS__();                            \
    }                                                  \
  }()
