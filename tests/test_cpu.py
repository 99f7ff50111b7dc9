"""medtrt.cpu: the CPU's model and instruction sets, as records and the INT8 choice read them."""

from __future__ import annotations

from medtrt.cpu import CpuInfo, cpu_info, parse_cpuinfo

EPYC = """processor\t: 0
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu sse4_2 avx avx2 fma bmi2
processor\t: 1
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu sse4_2 avx avx2 fma bmi2
"""
XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 amx_tile amx_int8
"""


def test_parse_cpuinfo_reads_the_model_and_the_isa_flags_in_a_fixed_order():
    assert parse_cpuinfo(EPYC) == ("AMD EPYC 7763 64-Core Processor",
                                   ("sse4_2", "avx", "avx2", "fma"))
    model, flags = parse_cpuinfo(XEON)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert flags == ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                     "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def test_int8_dot_needs_vnni_or_amx():
    assert not CpuInfo("epyc", 2, parse_cpuinfo(EPYC)[1]).int8_dot
    assert CpuInfo("xeon", 2, parse_cpuinfo(XEON)[1]).int8_dot
    assert CpuInfo("client", 8, ("avx2", "avx_vnni")).int8_dot
    info = cpu_info()
    assert info.cores >= 1 and info.model
    assert info.to_json()["int8_dot"] == info.int8_dot
