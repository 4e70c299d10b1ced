// The namespace of the ISA level a kernel source is being compiled for. Sources shared between
// levels (gemm_bf16_generic.cpp for generic and avx512, gemm_bf16_amx.cpp for amx and
// amx_emulated) are compiled once per level with different ISA flags; CMake passes
// -DKT_KERNEL_NS=<level>. Everything such a source defines, including the inline helpers of the
// headers below kernels/ that say so, lives in kt_moe::KT_KERNEL_NS, so the linker never merges
// an AVX-512 copy of a helper into a caller that must run on any x86-64 CPU.
#pragma once

#ifndef KT_KERNEL_NS
#error "kernel sources are compiled with -DKT_KERNEL_NS=<level> (see the kernels section of CMakeLists.txt)"
#endif
