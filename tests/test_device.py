"""Training's precision: `auto` takes bf16 where the CPU has AMX, fp32 elsewhere; a named precision stays."""

import pytest
import torch

from nmt.device import resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AVX512_BF16 = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
AMX = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"


@pytest.mark.parametrize(
    "flags, device, expected",
    [
        (AMX, CPU, "bf16"),
        (AVX512_BF16, CPU, "fp32"),
        ("flags\t\t: fpu sse2 avx2\n", CPU, "fp32"),
        (AMX, CUDA, "fp32"),
    ],
)
def test_auto_takes_bf16_only_on_a_cpu_with_amx(tmp_path, flags, device, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\n" + flags)
    assert resolve_precision("auto", device, cpuinfo) == expected


def test_auto_without_cpuinfo_is_fp32(tmp_path):
    assert resolve_precision("auto", CPU, tmp_path / "absent") == "fp32"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_named_precision_stays(tmp_path, precision):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AVX512_BF16)
    assert resolve_precision(precision, CPU, cpuinfo) == precision
