// MEDTRT_VECTOR_CLONES: compiles a hot CPU loop for AVX-512 and AVX2 as well as the baseline the
// extension is built for, the best one chosen when the extension loads (function multiversioning
// with GCC or Clang on x86-64 ELF; elsewhere the baseline alone). The wheel stays portable and a
// loop that vectorises runs 1.5-2x faster on the CPUs that have the wider units.
//
// Only for loops whose results cannot depend on the vector width: integer work, or float work
// without reassociation (-ffp-contract=off holds for every clone, so no clone fuses a multiply
// and an add the baseline rounds twice).
#pragma once

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && defined(__ELF__) && \
    !defined(__CUDACC__)
#define MEDTRT_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MEDTRT_VECTOR_CLONES
#endif
